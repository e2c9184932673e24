"""Grafana dashboards as code (grafana-foundation-sdk); the JSON they generate is in dashboards/."""
