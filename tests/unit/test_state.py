import json
import math
import random

import pytest

from exporter.attribution.estimator import EstimatorSettings, MarginalCostEstimator
from exporter.attribution.work import Work
from exporter.state import MAX_BYTES, StateFile
from tests.loop_rig import rig_attributor

IDENTITY = {"version": "1.2.3", "gpu": "H100", "gpus": 2.0, "model_params": 8e9}
NOW = 1.7e9


def state_file(path, identity=IDENTITY, max_age=3600.0, now=NOW):
    return StateFile(path / "state.json", identity, max_age, clock=lambda: now)


def test_what_is_saved_is_resumed(tmp_path):
    state_file(tmp_path).save({"idle": {"samples": [150.0]}})
    loaded = state_file(tmp_path, now=NOW + 30).load()
    assert (loaded.reason, loaded.core, loaded.age_seconds) == ("resumed", {"idle": {"samples": [150.0]}}, 30.0)
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left behind


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "corrupt"),
        (b"\xff\xfe", "corrupt"),
        (b'{"format": 1, "identity": {}, "saved_unixtime": NaN, "core": {}}', "corrupt"),
        (b"[1, 2]", "corrupt"),
        (b" " * (MAX_BYTES + 1), "corrupt"),
    ],
)
def test_a_corrupt_file_is_ignored_with_its_reason(tmp_path, content, reason):
    (tmp_path / "state.json").write_bytes(content)
    loaded = state_file(tmp_path).load()
    assert loaded.core is None and loaded.reason.startswith(reason)


def test_a_missing_file_a_foreign_one_and_a_stale_one_are_not_resumed(tmp_path):
    assert state_file(tmp_path).load().reason == "absent"
    state_file(tmp_path).save({})
    assert state_file(tmp_path, identity={**IDENTITY, "gpu": "A100"}).load().reason.startswith("foreign")
    assert state_file(tmp_path, identity={**IDENTITY, "version": "1.2.4"}).load().reason.startswith("foreign")
    assert state_file(tmp_path, now=NOW + 3601).load().reason.startswith("stale")
    assert state_file(tmp_path, now=NOW - 3600).load().reason.startswith("stale")  # from the future


def test_a_state_that_cannot_be_written_as_json_leaves_the_old_file(tmp_path):
    state_file(tmp_path).save({"idle": {"samples": [1.0]}})
    with pytest.raises(ValueError):
        state_file(tmp_path).save({"idle": {"samples": [math.nan]}})
    assert json.loads((tmp_path / "state.json").read_text())["core"] == {"idle": {"samples": [1.0]}}
    assert len(list(tmp_path.iterdir())) == 1


def trained():
    a = rig_attributor()
    a.estimator = MarginalCostEstimator(a.prior.energy, EstimatorSettings(window_seconds=5))
    rng = random.Random(4)
    for _ in range(200):
        w = Work(input=rng.uniform(0, 9000), output=rng.uniform(100, 3000), steps=200, kv_context=1e6)
        a.estimator.observe(0.03 * w.input + 0.01 * w.output + 2.5 * w.steps, 5.0, w)
    for watts in (140.0, 150.0, 160.0):
        a.idle.observe(watts, 1.0)
    return a


def test_the_core_resumes_with_the_costs_it_had():
    before = trained()
    after = rig_attributor()
    after.estimator = MarginalCostEstimator(after.prior.energy, EstimatorSettings(window_seconds=5))
    after.import_state(json.loads(json.dumps(before.export_state())), elapsed_seconds=0.0)
    assert after.estimator.coefficients == before.estimator.coefficients
    assert after.estimator.stddevs == before.estimator.stddevs
    assert after.estimator.updates == before.estimator.updates and after.idle.watts == 150.0


def test_time_away_pulls_the_costs_back_towards_the_prior_as_time_without_data_would():
    before = trained()
    after = rig_attributor()
    after.estimator = MarginalCostEstimator(after.prior.energy, EstimatorSettings(window_seconds=5))
    after.import_state(before.export_state(), elapsed_seconds=3600.0)
    fitted, prior = before.estimator.coefficients.input, after.prior.energy.input
    assert after.estimator.coefficients.input == pytest.approx(prior + math.exp(-1) * (fitted - prior))


@pytest.mark.parametrize(
    "spoil",
    [
        lambda s: s["estimator"].update(r=[1.0] * 4),
        lambda s: s["estimator"].update(r=[1.0, 1.0, 1.0, 1.0, float("inf")]),
        lambda s: s["estimator"]["cov"][0].__setitem__(1, 9.0),  # not symmetric
        lambda s: s["estimator"].update(base=[x * 2 for x in s["estimator"]["base"]]),  # another prior
        lambda s: s["idle"].update(samples=[-5.0]),
        lambda s: s.pop("estimator"),
        lambda s: s["estimator"].update(updates=True),
    ],
)
def test_an_unusable_state_changes_nothing(spoil):
    state = trained().export_state()
    spoil(state)
    fresh = rig_attributor()
    fresh.estimator = MarginalCostEstimator(fresh.prior.energy, EstimatorSettings(window_seconds=5))
    untouched = (fresh.estimator.coefficients, fresh.idle.watts)
    with pytest.raises(ValueError):
        fresh.import_state(state, 0.0)
    assert (fresh.estimator.coefficients, fresh.idle.watts) == untouched
