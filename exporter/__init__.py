"""Token Economy Exporter: what each vLLM input and output token costs, in joules, money and CO2."""

__version__ = "0.1.0"
