"""Wiring: settings -> sources, core, ledger, collector, HTTP server and the loop."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from exporter import __version__
from exporter import log as logging_setup
from exporter.attribution.attributor import Attributor, Policy
from exporter.attribution.estimator import EstimatorSettings, MarginalCostEstimator
from exporter.attribution.idle import IdlePowerEstimator
from exporter.attribution.prior import roofline_prior
from exporter.collector import LedgerCollector
from exporter.config import Estimator, Settings, StaticPowerPolicy, StepCostPolicy, env_name, flag_name
from exporter.gpu_table import GpuSpec
from exporter.ledger import Ledger
from exporter.loop import CollectionLoop
from exporter.model_spec import ModelSpec
from exporter.model_spec import resolve as resolve_model
from exporter.pricing import Prices
from exporter.server import HttpServer, MetricsCache, Routes
from exporter.sources.energy import EnergySetup, EnergySourceError, open_energy_source
from exporter.sources.vllm import VllmSource

EXPLICIT_WEIGHTS = (
    "input_joules_per_token",
    "cached_input_joules_per_token",
    "output_joules_per_token",
    "step_joules",
    "kv_joules_per_token",
)


class StartupError(Exception):
    pass


@dataclass
class App:
    loop: CollectionLoop
    server: HttpServer
    closers: list
    log: object
    ledger: Ledger
    attributor: Attributor

    def run(self, stop: threading.Event) -> None:
        # The tick thread must not hold the GIL for CPython's default 5 ms while a scrape waits.
        sys.setswitchinterval(0.0005)
        self.server.start()
        self.log.info("started", port=self.server.port)
        try:
            self.loop.run(stop)
        finally:
            self.server.stop()
            for close in self.closers:
                close()
            self.log.info("stopped")


def _explicit_weights(settings: Settings) -> dict[str, float | None]:
    return {name: getattr(settings, name) for name in EXPLICIT_WEIGHTS}


def make_attributor(settings: Settings, gpu: GpuSpec, gpu_count: int, model: ModelSpec, log=None) -> Attributor:
    """The core as the settings declare it: roofline prior, idle estimate, prices, policies, estimator."""
    explicit = _explicit_weights(settings)
    prior = roofline_prior(
        gpu,
        gpu_count,
        model,
        compute_efficiency=settings.compute_efficiency,
        bandwidth_efficiency=settings.bandwidth_efficiency,
        step_overhead_seconds=settings.step_overhead_seconds,
        relative_stddev=settings.prior_relative_stddev,
        idle_watts=settings.idle_watts,
        prefill_watts=settings.prefill_watts,
        decode_watts=settings.decode_watts,
        explicit=explicit,
    )
    idle_watts = (settings.idle_watts or gpu.idle_watts) * gpu_count
    limit_watts = max(settings.prefill_watts or 0.0, gpu.board_limit_watts) * gpu_count
    electricity = settings.electricity_price_per_kwh if settings.electricity_billing == "counted" else 0.0
    if settings.electricity_billing == "excluded" and log is not None:
        log.warning(
            "electricity_not_counted",
            reason="a GPU rental price is set and usually includes power; "
            "set --electricity-with-rental true to add electricity on top",
        )
    prices = Prices(settings.gpu_hourly_price, electricity, settings.pue, settings.grid_carbon_intensity)
    estimator = None
    if settings.estimator is Estimator.FITTED:
        estimator = MarginalCostEstimator(
            prior.energy,
            EstimatorSettings(
                window_seconds=settings.fit_window_seconds,
                reversion_seconds=settings.prior_reversion_seconds,
                measurement_noise=settings.measurement_noise,
                prior_relative_stddev=settings.prior_relative_stddev,
                identified_ratio=settings.identified_ratio,
            ),
        )
    if log is not None:
        log.info(
            "attribution_prior",
            gpu=gpu.key,
            gpus=gpu_count,
            model_params=model.active_params,
            model_spec=model.source,
            joules_per_input_token=prior.energy.input,
            joules_per_output_token=prior.energy.output,
            joules_per_step=prior.energy.step,
        )
    return Attributor(
        prior,
        IdlePowerEstimator(idle_watts, settings.idle_window, settings.idle_min_samples),
        prices,
        gpu_count,
        Policy(
            static_by_occupancy=settings.static_power_policy is StaticPowerPolicy.OCCUPANCY,
            step_on_output=settings.step_cost_policy is StepCostPolicy.OUTPUT,
        ),
        limit_watts_total=limit_watts,
        estimator=estimator,
    )


def build(
    settings: Settings,
    energy: EnergySetup | None = None,
    model: ModelSpec | None = None,
    energy_label: str | None = None,
) -> App:
    """`energy` and `model` replace what the settings would open (the simulator passes its own)."""
    logging_setup.configure(settings.log_format.value, settings.log_level)
    log = logging_setup.get_logger()
    if energy is None:
        try:
            energy = open_energy_source(settings, log=log)
        except EnergySourceError as err:
            raise StartupError(str(err)) from None
    if energy.fallback_reason:
        log.warning("energy_source_fallback", mode=energy.mode, reason=energy.fallback_reason)

    if model is None:
        model = resolve_model(settings.model_dir, settings.model_params, settings.bytes_per_param)
    attributor = make_attributor(settings, energy.gpu_spec, energy.gpu_count, model, log)
    build_labels = {
        "version": __version__,
        "energy_source": energy.mode,
        "gpu_type": energy.gpu_spec.key,
        "model_spec": model.source,
        "prior": "explicit" if any(v is not None for v in _explicit_weights(settings).values()) else "roofline",
        "estimator": settings.estimator.value,
        "electricity": settings.electricity_billing,
        "static_power_policy": settings.static_power_policy.value,
        "step_cost_policy": settings.step_cost_policy.value,
        "currency": settings.currency,
        "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
    }
    ledger = Ledger()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger, build_labels, attributor.prices))
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=registry)

    host, port = settings.listen_host_port
    routes = Routes(MetricsCache(registry, ledger), ledger, settings.vllm_url, energy.mode)
    try:
        server = HttpServer(host, port, routes)
    except OSError as err:
        raise StartupError(
            f"setting listen_address ({flag_name('listen_address')} / {env_name('listen_address')}): "
            f"cannot listen on {settings.listen_address}: {err.strerror or err}"
        ) from None

    vllm = VllmSource(
        settings.vllm_url, settings.vllm_metrics_path, settings.effective_vllm_timeout, settings.vllm_max_response_bytes
    )
    loop = CollectionLoop(vllm, energy.source, attributor, ledger, log, settings.interval)
    closers = [vllm.close] + ([energy.source.close] if hasattr(energy.source, "close") else [])
    return App(loop, server, closers, log, ledger, attributor)
