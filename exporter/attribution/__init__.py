"""The pure core: numbers in, numbers out. No I/O, no clock, no Prometheus."""
