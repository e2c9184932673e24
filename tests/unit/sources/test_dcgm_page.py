"""The dcgm-exporter page parser and the choice of this pod's GPUs: pure functions, read on the
fixtures of tests/fixtures/dcgm and on hostile pages."""

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.sources.dcgm_page import ENERGY, MAX_SAMPLES, POWER, SelectionError, parse, select
from exporter.sources.errors import SourceError
from exporter.sources.exposition import MAX_LABELS
from tests.dcgm_pages import (
    A100,
    H100,
    H100_ENERGY_MJ,
    L40S,
    MIG_LARGE_POD,
    MIG_SMALL_POD,
    NAMESPACE,
    POD,
    load,
    with_energy,
    without_pod_labels,
)
from tests.unit.test_architecture import CORE_STDLIB, IMPURE_BUILTINS, PACKAGE, imports

LABELS = 'gpu="0",UUID="GPU-x",device="nvidia0",modelName="NVIDIA H100 80GB HBM3"'


def one_gpu(energy: str = "1000", power: str = "100.000000", labels: str = LABELS) -> str:
    return (
        f"# HELP {POWER} Power draw (in W).\n# TYPE {POWER} gauge\n{POWER}{{{labels}}} {power}\n"
        f"# HELP {ENERGY} Total energy consumption since boot (in mJ).\n# TYPE {ENERGY} counter\n"
        f"{ENERGY}{{{labels}}} {energy}\n"
    )


def select_error(page, **kw) -> SelectionError:
    with pytest.raises(SelectionError) as caught:
        select(page, **kw)
    return caught.value


def parse_error(text: str) -> SourceError:
    with pytest.raises(SourceError) as caught:
        parse(text)
    return caught.value


# -- the parser -----------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["dcgm_page", "vllm_page", "plugin_page", "exposition"])
def test_the_page_parsers_are_pure_like_the_core(module):
    """Text in, values out: standard modules of data and arithmetic, the core's types, the text
    format's scanner, the plugin's family names and the sources' error; no I/O (the fetching
    lives in the sources that use them)."""
    path = PACKAGE / "sources" / f"{module}.py"
    pure = (
        "exporter.attribution.",
        "exporter.sources.errors",
        "exporter.sources.exposition",
        "exporter.sources.plugin_families",
    )
    for imported in imports(f"exporter.sources.{module}", path):
        if imported.startswith("exporter."):
            assert imported.startswith(pure), imported
        else:
            assert imported.split(".")[0] in CORE_STDLIB, imported
    text = path.read_text()
    assert not any(f"{name}(" in text for name in IMPURE_BUILTINS)


def test_a_pod_mapped_page_gives_every_gpu_once_in_joules():
    page = parse(load("h100-node-pod-mapping.txt"))
    boards = page.boards()
    assert sorted(boards) == sorted(H100) and page.pod_mapping
    gpu0 = boards[H100[0]]
    assert (gpu0.index, gpu0.name, gpu0.problem) == (0, "NVIDIA H100 80GB HBM3", None)
    assert gpu0.energy_joules == H100_ENERGY_MJ[0] / 1000  # mJ since driver load -> J
    assert gpu0.power_watts == pytest.approx(402.117)
    owners = {s.owner for s in page.samples if s.uuid == H100[0]}
    assert owners == {(NAMESPACE, POD)}
    assert {s.container for s in page.samples if s.uuid == H100[0]} == {"vllm"}


def test_a_page_without_pod_mapping_and_the_newer_hostname_label():
    page = parse(load("l40s-node-no-pod-mapping.txt"))
    assert not page.pod_mapping
    assert [(b.index, b.name) for b in page.boards().values()] == [(0, "NVIDIA L40S"), (1, "NVIDIA L40S")]


def test_the_old_namespace_labels_are_read_too():
    # dcgm-exporter --use-old-namespace: uuid, pod_name, pod_namespace, container_name.
    labels = 'gpu="3",uuid="GPU-old",pod_name="p",pod_namespace="ns",container_name="c",modelName="NVIDIA A10G"'
    page = parse(one_gpu(labels=labels))
    (sample, _) = page.samples
    assert (sample.uuid, sample.index, sample.owner, sample.container) == ("GPU-old", 3, ("ns", "p"), "c")


def test_empty_pod_labels_are_no_mapping():
    # Some releases print container="",namespace="",pod="" on unmapped GPUs.
    page = parse(one_gpu(labels=LABELS + ',container="",namespace="",pod=""'))
    assert not page.pod_mapping


def test_a_family_whose_name_extends_a_wanted_one_is_not_read():
    text = one_gpu() + 'DCGM_FI_DEV_POWER_USAGE_INSTANT{gpu="0",UUID="GPU-x"} 999.000000\n'
    assert parse(text).boards()["GPU-x"].power_watts == 100.0


def test_blank_sentinels_non_finite_and_negative_values_are_unusable():
    # Older releases printed DCGM's blanks (2^63 - 16 and up; 2^47 and up for doubles).
    for energy in ("9223372036854775794", "NaN", "+Inf", "-5", "banana"):
        board = parse(one_gpu(energy=energy)).boards()["GPU-x"]
        assert (board.energy_joules, board.problem) == (None, "bad_value"), energy
    for power in ("140737488355328.000000", "NaN", "-1.0"):
        assert parse(one_gpu(power=power)).boards()["GPU-x"].power_watts is None, power


def test_a_sample_without_a_uuid_is_skipped():
    text = one_gpu() + f'{ENERGY}{{gpu="9",modelName="x"}} 5\n'
    assert list(parse(text).boards()) == ["GPU-x"]


def test_a_gpu_with_power_but_no_energy_says_so():
    text = f'{ENERGY}{{gpu="0",UUID="GPU-a"}} 7\n{POWER}{{gpu="1",UUID="GPU-b"}} 60.000000\n'
    boards = parse(text).boards()
    assert (boards["GPU-b"].energy_joules, boards["GPU-b"].problem, boards["GPU-b"].power_watts) == (
        None,
        "no_energy_sample",
        60.0,
    )


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "no DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"),
        ('vllm:prompt_tokens_total{model_name="m"} 3\n', "dcgm-exporter's metrics page"),
        (one_gpu(labels=",".join(f'l{i}="v"' for i in range(MAX_LABELS + 1))), "labels"),
        (one_gpu(labels='UUID="GPU-x",junk="' + "x" * 70_000 + '"'), "characters"),
        (f'{ENERGY}{{UUID="GPU-x"}} 1\n' * (MAX_SAMPLES + 1), "not one node's page"),
    ],
)
def test_hostile_pages_are_parse_errors(text, words):
    err = parse_error(text)
    assert err.reason == "parse" and words in err.detail


def test_a_truncated_page_reads_what_is_whole():
    text = load("h100-node-pod-mapping.txt")
    cut = text.index(ENERGY + "{", text.index(f"# TYPE {ENERGY}")) + 40  # inside GPU 0's energy sample
    boards = parse(text[:cut] + "\n" + one_gpu()).boards()
    assert boards[H100[0]].energy_joules is None and boards["GPU-x"].energy_joules == 1.0


# -- choosing this pod's GPUs ---------------------------------------------------------------------


def test_pod_labels_choose_this_pods_gpus_only():
    page = parse(load("h100-node-pod-mapping.txt"))
    chosen = select(page, pod=POD, namespace=NAMESPACE)
    assert chosen.by == "pod" and (chosen.mig, chosen.shared) == ((), ())
    assert chosen.gpus == ((0, H100[0], "NVIDIA H100 80GB HBM3"), (1, H100[1], "NVIDIA H100 80GB HBM3"))


def test_uuids_win_over_pod_labels_and_keep_their_order():
    page = parse(load("h100-node-pod-mapping.txt"))
    chosen = select(page, uuids=[H100[5], H100[2], H100[5]], pod=POD, namespace=NAMESPACE)
    assert chosen.by == "uuid" and [g.uuid for g in chosen.gpus] == [H100[5], H100[2]]


def test_without_pod_mapping_the_error_names_the_gpus_setting():
    page = parse(load("l40s-node-no-pod-mapping.txt"))
    err = select_error(page, pod=POD, namespace=NAMESPACE)
    assert err.reason == "no_pod_labels" and "gpus setting" in err.message and "UUID" in err.message
    assert err.transient  # labels can be missing for one scrape; opening waits a little
    # ... and the GPUs of the node are never taken wholesale: the UUIDs work.
    assert [g.uuid for g in select(page, uuids=[L40S[1]]).gpus] == [L40S[1]]


def test_nothing_to_choose_by_is_an_error_naming_both_ways():
    err = select_error(parse(load("l40s-node-no-pod-mapping.txt")))
    assert err.reason == "no_selection" and "dcgm_pod" in err.message and "gpus setting" in err.message


def test_a_pod_not_mapped_yet_is_transient_and_counts_the_others():
    err = select_error(parse(load("h100-node-pod-mapping.txt")), pod="vllm-new-0", namespace=NAMESPACE)
    assert (err.reason, err.transient) == ("pod_not_found", True)
    assert "inference/vllm-new-0" in err.message and "2 other pods'" in err.message


def test_the_namespace_must_match_too():
    err = select_error(parse(load("h100-node-pod-mapping.txt")), pod=POD, namespace="default")
    assert err.reason == "pod_not_found"


@pytest.mark.parametrize(
    "uuids, reason, words",
    [
        (["0", "1"], "gpu_index", "by GPU- UUID"),
        (["MIG-4f2c9a1e-0000-0000-0000-000000000000"], "mig", "board's GPU- UUID"),
        (["GPU-00000000-dead-beef-0000-000000000000"], "gpu_not_found", H100[0]),
    ],
)
def test_uuid_selection_errors(uuids, reason, words):
    err = select_error(parse(load("h100-node-pod-mapping.txt")), uuids=uuids)
    assert err.reason == reason and words in err.message and not err.transient


def test_a_gpu_shared_by_several_series_counts_once_and_is_flagged_shared():
    page = parse(load("h100-node-time-sliced.txt"))
    assert sum(1 for s in page.samples if s.uuid == H100[0] and s.family == ENERGY) == 3
    chosen = select(page, pod=POD, namespace=NAMESPACE)
    assert [g.uuid for g in chosen.gpus] == [H100[0]]  # two containers of this pod: one GPU
    assert chosen.shared == (H100[0],)  # a notebook in another namespace holds it too
    assert page.boards()[H100[0]].energy_joules == 52200418812 / 1000


def test_mig_instances_of_a_whole_board_measure_the_board_once():
    page = parse(load("a100-node-mig.txt"))
    chosen = select(page, pod=MIG_LARGE_POD, namespace=NAMESPACE)
    assert chosen.gpus == ((1, A100[1], "NVIDIA A100-SXM4-80GB"),) and chosen.mig == (A100[1],)
    assert page.boards()[A100[1]].energy_joules == 95544310731 / 1000


def test_a_mig_instance_beside_other_instances_is_refused_naming_them():
    page = parse(load("a100-node-mig.txt"))
    err = select_error(page, pod=MIG_SMALL_POD, namespace=NAMESPACE)
    assert err.reason == "mig" and not err.transient
    assert "1, 5, 13" in err.message and "5, 13 are not known to be this pod's" in err.message
    assert err.gpus == ((0, A100[0], "NVIDIA A100-SXM4-80GB"),)  # kept for the phase model's labels


def test_mig_copies_of_the_board_merge_to_the_newest_sample():
    board = parse(load("a100-node-mig.txt")).boards()[A100[0]]
    assert board.energy_joules == 73021561003 / 1000  # the 1g instance's copy was sampled later


def test_mig_without_pod_labels_only_a_single_instance_board_is_whole():
    page = parse(without_pod_labels(load("a100-node-mig.txt")))
    assert select(page, uuids=[A100[1]]).mig == (A100[1],)
    err = select_error(page, uuids=[A100[0]])
    assert err.reason == "mig" and "5, 13 are not known" in err.message


def test_a_chosen_gpu_without_a_usable_counter_is_refused():
    text = with_energy(load("h100-node-pod-mapping.txt"), {H100[1]: 9223372036854775794})
    err = select_error(parse(text), pod=POD, namespace=NAMESPACE)
    assert err.reason == "no_energy_counter" and H100[1] in err.message and not err.transient


_PIECES = st.sampled_from(
    [
        ENERGY,
        POWER,
        "{",
        "}",
        ",",
        '"',
        "\\",
        "\n",
        " ",
        "#",
        'UUID="GPU-x"',
        'uuid="GPU-y"',
        'gpu="0"',
        'gpu="99999999999"',
        'GPU_I_ID="3"',
        f'pod="{POD}"',
        f'namespace="{NAMESPACE}"',
        "NaN",
        "-1",
        "1e308",
        "9223372036854775807",
        "12345",
    ]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(_PIECES, st.text(max_size=8)), max_size=60))
def test_any_text_parses_or_fails_as_a_parse_error(pieces):
    """Whatever the page holds, the parser and the selection raise only their typed errors."""
    try:
        page = parse("".join(pieces))
    except SourceError as err:
        assert err.reason == "parse"
        return
    for board in page.boards().values():
        assert board.energy_joules is None or (0 <= board.energy_joules < float("inf"))
    for kw in ({"pod": POD, "namespace": NAMESPACE}, {"uuids": ["GPU-x"]}, {}):
        with contextlib.suppress(SelectionError):
            select(page, **kw)
