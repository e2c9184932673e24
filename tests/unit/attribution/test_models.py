from exporter.attribution.models import OVERFLOW_MODEL, ModelRoster
from exporter.attribution.readings import EngineSample


def engines(*names):
    return [EngineSample(name, "0", generation_tokens=1.0) for name in names]


def test_models_beyond_the_limit_count_under_one_model_each_in_its_own_series():
    roster = ModelRoster(2, 60.0)
    admission = roster.admit(engines("a", "b", "c", "d"), 0.0)
    assert [e.model_name for e in admission.engines] == ["a", "b", OVERFLOW_MODEL, OVERFLOW_MODEL]
    assert [e.engine for e in admission.engines[2:]] == ["0@c", "0@d"]  # never one counter for two
    assert admission.overflowed == 2


def test_a_model_not_seen_for_long_leaves_and_frees_its_place():
    roster = ModelRoster(2, 60.0)
    roster.admit(engines("a", "b"), 0.0)
    assert roster.admit(engines("b"), 50.0).expired == ()
    admission = roster.admit(engines("b", "c"), 100.0)
    assert admission.expired == ("a",) and admission.overflowed == 0
    assert [e.model_name for e in admission.engines] == ["b", "c"]
