"""Wiring: settings -> sources, core, ledger, collector, HTTP server and the loop. The only module
that knows the settings and every layer; each layer it builds takes plain values."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from structlog.typing import FilteringBoundLogger

from exporter import __version__
from exporter import log as logging_setup
from exporter.attribution.attributor import Attributor, Policy
from exporter.attribution.estimator import EstimatorSettings, MarginalCostEstimator
from exporter.attribution.gpu_table import GpuSpec
from exporter.attribution.idle import IdlePowerEstimator
from exporter.attribution.model_spec import ModelSpec
from exporter.attribution.models import ModelRoster
from exporter.attribution.pricing import Prices
from exporter.attribution.prior import Prior, roofline_prior
from exporter.collector import LedgerCollector
from exporter.config import (
    Estimator,
    Settings,
    StaticPowerPolicy,
    StepCostPolicy,
    closest_variable,
    env_name,
    flag_name,
    unknown_environment,
)
from exporter.landing import History
from exporter.ledger import Ledger
from exporter.loop import CollectionLoop
from exporter.server import HttpServer, MetricsCache, Routes
from exporter.sources.energy import EnergyMode, EnergySetup, EnergySource, EnergySourceError, open_energy_source
from exporter.sources.model_config import resolve_model
from exporter.sources.plugin import PluginDirectory, PluginEnergy, WorkReader
from exporter.sources.vllm import VllmSource
from exporter.state import StateFile
from exporter.webconfig import WebConfigError, WebConfigWatcher

EXPLICIT_WEIGHTS = (
    "input_joules_per_token",
    "cached_input_joules_per_token",
    "output_joules_per_token",
    "step_joules",
    "kv_joules_per_token",
)


class StartupError(Exception):
    pass


# Kubernetes gives this container 5 s between SIGTERM and SIGKILL; a second is left for exiting.
STOP_SECONDS = 4.0
# Of those, what closing the server and the sources may take after the tick is given up on.
CLOSE_SECONDS = 1.5


@dataclass
class App:
    loop: CollectionLoop
    server: HttpServer
    closers: list[Callable[[], None]]
    log: FilteringBoundLogger
    ledger: Ledger
    attributor: Attributor
    web: WebConfigWatcher | None = None
    stop_seconds: float = STOP_SECONDS
    close_seconds: float = CLOSE_SECONDS

    def run(self, stop: threading.Event) -> bool:
        """Serves and ticks until `stop` is set, then stops within `stop_seconds` whatever a read
        is doing: the loop runs on a daemon thread of its own, and the caller's thread only waits
        for `stop` (a signal's handler runs there at once) and then for the others, each for a
        bounded time. False when a thread had to be left behind (a read or a close that did not
        return); the caller should then end the process without waiting for it."""
        # The tick thread must not hold the GIL for CPython's default 5 ms while a scrape waits.
        sys.setswitchinterval(0.0005)
        self.server.start()
        if self.web is not None:
            self.web.start()
        self.log.info("started", port=self.server.port)
        failures: list[BaseException] = []

        def tick() -> None:
            try:
                self.loop.run(stop)
            except BaseException as err:  # re-raised on the caller's thread, after the stop
                failures.append(err)
                stop.set()

        ticking = threading.Thread(target=tick, name="tick", daemon=True)
        ticking.start()
        try:
            stop.wait()
        finally:
            stop.set()
            clean = self._stop(ticking)
        if failures:
            raise failures[0]
        return clean

    def _stop(self, ticking: threading.Thread) -> bool:
        deadline = time.monotonic() + self.stop_seconds
        ticking.join(max(0.0, deadline - time.monotonic() - self.close_seconds))
        clean = not ticking.is_alive()
        if not clean:
            self.log.warning("stop_abandons_tick", reason="a source read was still running; its thread is left behind")
        closing = threading.Thread(target=self._close, name="close", daemon=True)
        closing.start()
        closing.join(max(0.0, deadline - time.monotonic()))
        if closing.is_alive():
            clean = False
            self.log.warning("stop_abandons_close", reason="closing the server or a source did not return in time")
        self.log.info("stopped", clean=clean)
        return clean

    def reload(self) -> bool:
        """Re-reads the web config now (SIGHUP); False when there is none, or it failed (logged)."""
        return self.web is not None and self.web.reload("signal")

    def _close(self) -> None:
        if self.web is not None:
            self.web.stop()
        for close in (self.server.stop, *self.closers):
            try:
                close()
            except Exception as err:  # one that fails must not keep the others open
                self.log.warning("close_failed", error=repr(err))


def stale_after_seconds(interval: float) -> float:
    """How old the last completed tick may be before /readyz says 503: three intervals, and never
    under 5 s, above the longest a tick can take while its reads end at their deadlines (vLLM's
    page at most 2 s or 0.8 x interval, NVML 1 s), so a slow source never flaps readiness and a
    loop that has stopped ticking takes the pod out of the endpoints."""
    return max(3 * interval, 5.0)


def _explicit_weights(settings: Settings) -> dict[str, float | None]:
    return {name: getattr(settings, name) for name in EXPLICIT_WEIGHTS}


def _prices(settings: Settings, log: FilteringBoundLogger | None) -> Prices:
    electricity = settings.electricity_price_per_kwh if settings.electricity_billing == "counted" else 0.0
    if settings.electricity_billing == "excluded" and log is not None:
        log.warning(
            "electricity_not_counted",
            reason="a GPU rental price is set and usually includes power; "
            "set --electricity-with-rental true to add electricity on top",
        )
    return Prices(settings.gpu_hourly_price, electricity, settings.pue, settings.grid_carbon_intensity)


def _estimator(settings: Settings, prior: Prior) -> MarginalCostEstimator | None:
    if settings.estimator is not Estimator.FITTED:
        return None
    return MarginalCostEstimator(
        prior.energy,
        EstimatorSettings(
            window_seconds=settings.fit_window_seconds,
            reversion_seconds=settings.prior_reversion_seconds,
            measurement_noise=settings.measurement_noise,
            prior_relative_stddev=settings.prior_relative_stddev,
            identified_ratio=settings.identified_ratio,
        ),
    )


def make_attributor(
    settings: Settings, gpu: GpuSpec, gpu_count: int, model: ModelSpec, log: FilteringBoundLogger | None = None
) -> Attributor:
    """The core as the settings declare it: roofline prior, idle estimate, prices, policies, estimator."""
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
        explicit=_explicit_weights(settings),
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
        IdlePowerEstimator(
            (settings.idle_watts or gpu.idle_watts) * gpu_count, settings.idle_window, settings.idle_min_samples
        ),
        _prices(settings, log),
        gpu_count,
        Policy(
            static_by_occupancy=settings.static_power_policy is StaticPowerPolicy.OCCUPANCY,
            step_on_output=settings.step_cost_policy is StepCostPolicy.OUTPUT,
        ),
        limit_watts_total=max(settings.prefill_watts or 0.0, gpu.board_limit_watts) * gpu_count,
        estimator=_estimator(settings, prior),
        roster=ModelRoster(settings.max_models, settings.model_expiry_seconds),
    )


def build_labels(settings: Settings, energy: EnergySetup, model: ModelSpec) -> dict[str, str]:
    """build_info's labels: what this exporter runs with."""
    explicit = any(v is not None for v in _explicit_weights(settings).values())
    return {
        "version": __version__,
        "energy_source": energy.mode,
        "gpu_type": energy.gpu_spec.key,
        "model_spec": model.source,
        "prior": "explicit" if explicit else "roofline",
        "estimator": settings.estimator.value,
        "electricity": settings.electricity_billing,
        "static_power_policy": settings.static_power_policy.value,
        "step_cost_policy": settings.step_cost_policy.value,
        "currency": settings.currency,
        "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
    }


def _open_energy(settings: Settings, log: FilteringBoundLogger) -> EnergySetup:
    try:
        energy = open_energy_source(settings.energy_options, log=log)
    except EnergySourceError as err:
        raise StartupError(str(err)) from None
    if energy.fallback_reason:
        log.warning("energy_source_fallback", mode=energy.mode, reason=energy.fallback_reason)
    return energy


def _web_config(settings: Settings, log: FilteringBoundLogger) -> WebConfigWatcher | None:
    if settings.web_config_file is None:
        return None
    try:
        return WebConfigWatcher(settings.web_config_file, log)
    except WebConfigError as err:
        raise StartupError(
            f"setting web_config_file ({flag_name('web_config_file')} / {env_name('web_config_file')}): {err}"
        ) from None


def _listen(settings: Settings, routes: Routes, web: WebConfigWatcher | None = None) -> HttpServer:
    host, port = settings.listen_host_port
    try:
        return HttpServer(host, port, routes, web=None if web is None else web.current)
    except OSError as err:
        raise StartupError(
            f"setting listen_address ({flag_name('listen_address')} / {env_name('listen_address')}): "
            f"cannot listen on {settings.listen_address}: {err.strerror or err}"
        ) from None


def build(settings: Settings, energy: EnergySetup | None = None, model: ModelSpec | None = None) -> App:
    """`energy` and `model` replace what the settings would open (the simulator passes its own)."""
    logging_setup.configure(settings.log_format.value, settings.log_level)
    log = logging_setup.get_logger()
    for name in unknown_environment(os.environ):  # pydantic-settings ignores them silently
        log.warning("unknown_environment_variable", variable=name, did_you_mean=closest_variable(name))
    web = _web_config(settings, log)  # before any source opens: a bad file stops start-up at once
    energy = energy or _open_energy(settings, log)
    model = model or resolve_model(settings.model_dir, settings.model_params, settings.bytes_per_param)
    attributor = make_attributor(settings, energy.gpu_spec, energy.gpu_count, model, log)

    ledger = Ledger()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        LedgerCollector(
            ledger,
            build_labels(settings, energy, model),
            attributor.prices,
            api_prices=settings.api_price_lists,
            break_even_reference=settings.break_even_reference,
        )
    )
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=registry)
    cache = MetricsCache(registry, ledger)
    history = History()  # the landing page's last minutes
    routes = Routes(
        cache,
        ledger,
        settings.vllm_url_display,
        energy.mode,
        stale_after_seconds=stale_after_seconds(settings.interval),
        history=history,
        currency=settings.currency,
    )
    server = _listen(settings, routes, web)

    work = _work_reader(settings)
    energy_reader = _energy_reader(EnergyMode(settings.energy_source), work, energy.source)
    keeper = _resume(settings, attributor, energy, model, log)
    loop = CollectionLoop(
        work,
        energy_reader,
        attributor,
        ledger,
        log,
        settings.interval,
        keeper=keeper,
        http_events=lambda: server.counts,
        published=_after_publish(ledger, cache, history),
    )
    return App(loop, server, [work.close, energy_reader.close], log, ledger, attributor, web)


def _after_publish(ledger: Ledger, cache: MetricsCache, history: History) -> Callable[[], None]:
    """What follows each publication, on the tick's thread: the landing page's history takes the
    new view, and the exposition is rendered for it before the next scrape asks."""

    def after() -> None:
        history.record(ledger.view())
        cache.warm()

    return after


def _resume(
    settings: Settings, attributor: Attributor, energy: EnergySetup, model: ModelSpec, log: FilteringBoundLogger
) -> Callable[[dict[str, object]], None] | None:
    """With a state file, resume what an earlier run learned (when it is this exporter's, for this
    GPU and model, and recent), and return what keeps it after each fit."""
    if settings.state_file is None:
        return None
    identity: dict[str, str | float] = {
        "version": __version__,
        "gpu": energy.gpu_spec.key,
        "gpus": float(energy.gpu_count),
        "model_params": model.active_params,
        "weight_bytes": model.weight_bytes,
        "estimator": settings.estimator.value,
    }
    # Beyond ten time constants of the pull back to the prior, nothing of the fit is left anyway.
    state = StateFile(settings.state_file, identity, max_age_seconds=10 * settings.prior_reversion_seconds)
    loaded = state.load()
    try:
        if loaded.core is not None:
            attributor.import_state(loaded.core, loaded.age_seconds)
            log.info("state_resumed", path=str(state.path), age_seconds=round(loaded.age_seconds, 1))
        elif loaded.reason != "absent":
            log.warning("state_not_resumed", path=str(state.path), reason=loaded.reason)
    except ValueError as err:
        log.warning("state_not_resumed", path=str(state.path), reason=f"corrupt: {err}")
    return state.save


def _work_reader(settings: Settings) -> WorkReader:
    """vLLM's page, and the plugin's snapshot files first where a directory is shared."""
    page = VllmSource(
        settings.vllm_url, settings.vllm_metrics_path, settings.effective_vllm_timeout, settings.vllm_max_response_bytes
    )
    if settings.plugin_dir is None:
        return WorkReader(page)
    # A file not rewritten for a few ticks (the plugin publishes twice a second) is from a process that is gone.
    return WorkReader(page, PluginDirectory(settings.plugin_dir, stale_seconds=max(30.0, 3 * settings.interval)))


def _energy_reader(mode: EnergyMode, work: WorkReader, opened: EnergySource) -> EnergySource:
    """auto: the plugin's measurement when it has one, the opened chain's otherwise; plugin: only
    the plugin's; an explicit nvml, dcgm or phase-model: that source alone."""
    if mode is EnergyMode.AUTO:
        return PluginEnergy(work, opened)
    if mode is EnergyMode.PLUGIN:
        opened.close()  # the declared model only sized the prior
        return PluginEnergy(work, None)
    return opened
