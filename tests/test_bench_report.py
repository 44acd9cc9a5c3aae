"""The benchmark report's verdicts (benches/verdict.py, benches/report.py), with made-up
samples: a verdict ("faster", "target met") only where the difference is larger than the
noise, and the noise (coefficient of variation) shown beside every number."""

import importlib
import math
import pathlib
import sys

import pytest

BENCHES = pathlib.Path(__file__).resolve().parent.parent / "benches"

pytestmark = pytest.mark.skipif(
    not (BENCHES / "verdict.py").exists(), reason="the benchmarks' code is not beside the tests"
)


@pytest.fixture
def modules(monkeypatch):
    """benches/verdict.py and benches/report.py, imported from the checkout and forgotten
    afterwards (report.py puts benches/cases on sys.path, which monkeypatch restores)."""
    monkeypatch.syspath_prepend(str(BENCHES))
    names = ("verdict", "report", "impls")
    for name in names:
        monkeypatch.delitem(sys.modules, name, raising=False)
    try:
        yield importlib.import_module("verdict"), importlib.import_module("report")
    finally:
        for name in names:
            sys.modules.pop(name, None)


def spread(mean, cv, count=8):
    """``count`` samples with the given mean whose coefficient of variation is ``cv``
    (alternating mean ± d: the sample standard deviation of 2k such values is
    d·sqrt(2k/(2k-1)))."""
    d = mean * cv / math.sqrt(count / (count - 1))
    return [mean + d if i % 2 else mean - d for i in range(count)]


def test_summary_has_the_coefficient_of_variation(modules):
    verdict, _ = modules
    summary = verdict.summarize([90.0, 110.0, 90.0, 110.0])
    assert summary.mean == 100.0
    assert summary.count == 4
    assert summary.cv == pytest.approx(summary.stdev / 100.0)
    assert verdict.summarize(spread(200.0, 0.05)).cv == pytest.approx(0.05)
    with pytest.raises(ValueError):
        verdict.summarize([])


def test_a_difference_larger_than_the_noise_is_claimed(modules):
    verdict, _ = modules
    faster = verdict.compare(spread(80.0, 0.02), spread(100.0, 0.02))
    assert faster.ratio == pytest.approx(0.8)
    assert faster.noise == pytest.approx(math.hypot(0.02, 0.02))
    assert faster.claim == "faster" and faster.decided
    assert faster.text().startswith("0.80× ± 3%: faster")
    slower = verdict.compare(spread(130.0, 0.03), spread(100.0, 0.01))
    assert slower.claim == "slower"


def test_a_difference_within_the_noise_gets_no_verdict(modules):
    verdict, _ = modules
    # 7% apart, but each side scatters by 15%: nothing can be said.
    noisy = verdict.compare(spread(93.0, 0.15), spread(100.0, 0.15))
    assert not noisy.decided
    assert noisy.claim is None
    text = noisy.text()
    assert "undecided" in text
    assert "faster" not in text and "slower" not in text
    assert "noise 21.2% ≥ difference 7.5%" in text


def test_unknown_noise_gets_no_verdict(modules):
    verdict, _ = modules
    single = verdict.compare([50.0], spread(100.0, 0.01))
    assert not single.decided
    assert math.isinf(single.noise)
    assert "too few samples" in single.text()


@pytest.mark.parametrize(
    ("ratio", "cv", "claim"),
    [
        (1.00, 0.02, "≤ 1.1× met"),
        (1.25, 0.02, "> 1.1× missed"),
        (1.07, 0.04, None),  # 3% under the target, 5.7% noise
        (1.14, 0.05, None),  # 3.5% over it, 7.1% noise
    ],
)
def test_a_target_is_met_or_missed_only_beyond_the_noise(modules, ratio, cv, claim):
    verdict, _ = modules
    result = verdict.against_target(spread(100.0 * ratio, cv), spread(100.0, cv), 1.10)
    assert result.ratio == pytest.approx(ratio)
    assert result.claim == claim
    if claim is None:
        assert "undecided" in result.text()
        assert "met" not in result.text() and "missed" not in result.text()


def test_exactly_on_the_target_without_noise_meets_it(modules):
    verdict, _ = modules
    assert verdict.against_target([2.0, 2.0], [1.0, 1.0], 2.0).claim == "≤ 2× met"


def stats(samples):
    mean = sum(samples) / len(samples)
    variance = sum((value - mean) ** 2 for value in samples) / (len(samples) - 1)
    return {
        "env": "awaitlet-rs",
        "mean_s": mean,
        "stdev_s": math.sqrt(variance),
        "cv": math.sqrt(variance) / mean,
        "median_s": mean,
        "values": len(samples),
        "samples": samples,
        "loops": None,
    }


def report_data(micro, orm=None):
    return {
        "meta": {
            "date": "2026-01-01 00:00 UTC",
            "python": "3.14.0",
            "implementation": "CPython",
            "machine": {"cpu": "test CPU", "cores": 2, "os": "test"},
            "commit": "abc",
            "quality": "fast",
            "versions": {},
        },
        "micro": micro,
        "orm": orm or {},
        "scale": [],
        "failures": [],
        "notes": [],
    }


def test_the_report_shows_the_noise_and_withholds_noisy_verdicts(modules):
    _, report = modules
    data = report_data(
        {
            # 8% slower than native, but 10% noise on each side: undecided.
            "wait_sleep0": {
                "native": stats(spread(1e-6, 0.10)),
                "awaitlet-rs": stats(spread(1.08e-6, 0.10)),
            },
            # Clearly under 2× native.
            "wait_ready": {
                "native": stats(spread(1e-7, 0.02)),
                "awaitlet-rs": stats(spread(1.3e-7, 0.02)),
            },
        }
    )
    text = report.markdown(data)
    assert "| CV |" in text
    assert "| 10.0% |" in text
    sleep0 = text.split("## 3.")[1]
    row = next(line for line in sleep0.splitlines() if line.startswith("| awaitlet-rs"))
    assert "1.08× ± 14%: undecided" in row
    assert "slower" not in row and "faster" not in row
    targets = text.split("## Targets")[1].split("##")[0]
    assert "`wait_sleep0`, target ≤ 1.10× native await" in targets
    assert "undecided" in targets.split("`wait_sleep0`")[1].splitlines()[0]
    assert "`wait_ready`, target ≤ 2× native await" in targets
    assert "≤ 2× met" in targets.split("`wait_ready`")[1].splitlines()[0]


def test_the_orm_table_has_noise_and_verdicts(modules):
    _, report = modules
    data = report_data(
        {},
        {
            "orm_select": {
                "greenlet": stats(spread(0.010, 0.01)),
                "sqlalchemy-facade": stats(spread(0.008, 0.01)),
            }
        },
    )
    text = report.markdown(data)
    rows = text.splitlines()
    row = next(line for line in rows if line.startswith("| `orm_select`") and "facade" in line)
    assert "| 1.0% |" in row
    assert "0.80× ± 1%: faster" in row
    assert "≥ greenlet's throughput" in text
    assert "≤ 1× met" in text
