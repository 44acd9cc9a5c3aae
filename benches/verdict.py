"""How noisy a measurement is, and which verdicts it supports.

The benchmark report (``report.py``) compares means of repeated samples: awaitlet-rs
against native ``await`` or greenlet, against a target ratio. On a shared machine the
samples scatter by 10–25%, and a ratio of two such means is only as good as that scatter.
So every comparison carries its noise, and a verdict ("faster", "meets the target") is
given only where the difference it claims is larger than the noise; otherwise the verdict
is "undecided" and says why.

Noise, here, is the coefficient of variation (standard deviation over mean) of the
samples, combined for a ratio as relative errors are (the root of the sum of squares). It
is deliberately the spread of the samples, not the standard error of the mean: the
samples of a pyperf run are means over many loops already, and what makes them differ on
a busy machine (other work, frequency changes) does not average out within one run.

Only the standard library is used, so the unit tests can import this module anywhere.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    """Mean, standard deviation and coefficient of variation of some samples."""

    mean: float
    stdev: float
    count: int

    @property
    def cv(self) -> float:
        """Coefficient of variation: stdev / mean (0 for a single sample, whose noise is
        unknown: :func:`ratio_noise` makes that infinite, not zero)."""
        return self.stdev / self.mean if self.mean else math.inf


def summarize(samples: Sequence[float]) -> Summary:
    """The summary of ``samples`` (which must not be empty)."""
    if not samples:
        raise ValueError("no samples")
    stdev = statistics.stdev(samples) if len(samples) > 1 else 0.0
    return Summary(statistics.fmean(samples), stdev, len(samples))


@dataclass(frozen=True)
class Verdict:
    """A comparison of a candidate's samples with a reference's."""

    #: candidate mean / reference mean.
    ratio: float
    #: Relative noise of the ratio: the candidates' and references' CVs combined.
    noise: float
    #: The threshold the ratio is judged against (1.0: same speed).
    threshold: float
    #: The claim the numbers support, or None when the noise is too large for one.
    claim: str | None
    #: Why no claim was made (None when one was).
    reason: str | None

    @property
    def decided(self) -> bool:
        """Whether the noise allowed a claim."""
        return self.claim is not None

    @property
    def margin(self) -> float:
        """Distance of the ratio from the threshold, relative to the ratio."""
        return abs(self.ratio - self.threshold) / self.ratio

    def text(self) -> str:
        """``0.93× ± 4%: faster`` or ``1.07× ± 9%: undecided (...)``."""
        head = f"{self.ratio:.2f}× ± {self.noise:.0%}"
        if self.claim is not None:
            return f"{head}: {self.claim}"
        return f"{head}: undecided ({self.reason})"


def ratio_noise(candidate: Summary, reference: Summary) -> float:
    """Relative noise of ``candidate.mean / reference.mean``; infinite when either side has
    fewer than two samples (its noise is unknown)."""
    if candidate.count < 2 or reference.count < 2:
        return math.inf
    return math.hypot(candidate.cv, reference.cv)


def judge(
    candidate: Sequence[float],
    reference: Sequence[float],
    threshold: float,
    below: str,
    above: str,
) -> Verdict:
    """Compares the ratio of the means with ``threshold``: claims ``below`` or ``above`` only
    when the ratio is further from the threshold than the noise (both relative to the
    ratio). Exactly at the threshold, with no noise, ``below`` holds (targets are "≤")."""
    mine, theirs = summarize(candidate), summarize(reference)
    ratio = mine.mean / theirs.mean
    noise = ratio_noise(mine, theirs)
    difference = abs(ratio - threshold) / ratio
    if math.isinf(noise):
        return Verdict(ratio, noise, threshold, None, "too few samples to know the noise")
    if noise >= difference and not (noise == 0 and difference == 0):
        reason = f"noise {noise:.1%} ≥ difference {difference:.1%}"
        return Verdict(ratio, noise, threshold, None, reason)
    return Verdict(ratio, noise, threshold, below if ratio <= threshold else above, None)


def compare(candidate: Sequence[float], reference: Sequence[float]) -> Verdict:
    """Whether the candidate (times: lower is faster) is faster or slower than the
    reference, if the noise lets one tell."""
    return judge(candidate, reference, 1.0, "faster", "slower")


def against_target(
    candidate: Sequence[float], reference: Sequence[float], target: float
) -> Verdict:
    """Whether candidate / reference (times, or memory) is at most ``target``."""
    return judge(candidate, reference, target, f"≤ {target:g}× met", f"> {target:g}× missed")
