r"""Statistics over trials: means with Student's t confidence intervals, paired differences, the
winning-ticket verdict and censored early stops.

A lottery experiment repeats every (level, variant) over a few trials (2–5). Each trial has its own
θ₀ and data order, shared by all of that trial's levels and variants, so two variants of one trial
form a *pair*: ticket − reinit at one density compares two networks from the same trial, and so do
ticket − dense and one pruning rule − another. Differences are taken within a trial and summarised
over trials, which removes the trial-to-trial spread that both sides share.

With ``n`` trials the 95% interval of a mean is ``mean ± t_{0.975, n−1} · SD / √n``. The quantile
is large for small ``n`` (12.71 for n = 2, 4.30 for n = 3, 2.78 for n = 5): two trials give an
interval 12.7 standard errors wide on each side. `few_trials_note` says so in words.

The module is pure Python with ``math`` only (no JAX, no SciPy): Student's t distribution comes from
the regularized incomplete beta function (a continued fraction) and its quantile from bisection.

Every function takes plain floats. Accuracies are fractions in [0, 1]; the verdict's accuracy margin
is in the same unit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping

#: The confidence level of every interval this module makes unless told otherwise.
CONFIDENCE = 0.95

#: The accuracy margin δ of the winning-ticket verdict: a ticket may be at most this much less
#: accurate than the dense network (as a fraction: 0.005 = 0.5 percentage points). It is about the
#: trial-to-trial spread of a dense LeNet or Conv-2 on Fashion-MNIST, so an interval that reaches
#: below it admits a real loss.
ACCURACY_MARGIN = 0.005

__all__ = [
    "ACCURACY_MARGIN", "CONFIDENCE", "Estimate", "Verdict", "betainc", "censored",
    "few_trials_note", "mean_ci", "paired_difference", "t_cdf", "t_quantile", "winning_verdict",
]


# ----------------------------------------------------------------------------- Student's t


def betainc(a: float, b: float, x: float) -> float:
    r"""The regularized incomplete beta function.

    .. math::
        I_x(a, b) = \frac{1}{B(a, b)} \int_0^x t^{a-1} (1 - t)^{b-1} \, dt,
        \qquad B(a, b) = \frac{\Gamma(a)\Gamma(b)}{\Gamma(a + b)}

    evaluated by Lentz's method on its continued fraction (Numerical Recipes §6.4), which converges
    fast for :math:`x < (a + 1) / (a + b + 2)`; above that point it uses
    :math:`I_x(a, b) = 1 - I_{1-x}(b, a)`. Accurate to about 1e-14 relative.

    Args:
      a, b: the shape parameters, both > 0.
      x: the upper limit, in [0, 1].

    Returns:
      :math:`I_x(a, b)` in [0, 1].

    Raises:
      ValueError: a or b not positive, or x outside [0, 1].
    """
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc needs a > 0 and b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1, got x={x}")
    if x == 0.0 or x == 1.0:
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of `betainc` (modified Lentz; Numerical Recipes' ``betacf``)."""
    tiny, eps = 1e-300, 1e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            return h
    return h  # (not reached for the arguments Student's t gives it)


def t_cdf(t: float, df: float) -> float:
    r"""The cumulative distribution function of Student's t with `df` degrees of freedom.

    .. math::
        F(t; \nu) = 1 - \tfrac12 I_{\nu / (\nu + t^2)}\!\left(\tfrac{\nu}{2}, \tfrac12\right)
        \quad (t \ge 0), \qquad F(-t; \nu) = 1 - F(t; \nu),

    and, for :math:`t^2 < \nu`, the equal form
    :math:`F(t; \nu) = \tfrac12 + \tfrac12 I_{t^2/(\nu + t^2)}(\tfrac12, \tfrac{\nu}{2})`, which
    keeps relative precision near t = 0.

    Args:
      t: any float; ±inf give 1 and 0.
      df: degrees of freedom ν > 0 (for a mean over n trials, n − 1).

    Returns:
      P(T ≤ t).
    """
    if not df > 0:
        raise ValueError(f"t_cdf needs df > 0, got {df}")
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    t2 = t * t
    if t2 < df:  # near 0 the central form keeps its relative precision
        centre = 0.5 * betainc(0.5, df / 2.0, t2 / (df + t2))
        return 0.5 + centre if t >= 0 else 0.5 - centre
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t2))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    r"""The `p`-quantile of Student's t with `df` degrees of freedom: the t with
    :math:`F(t; \nu) = p`.

    Found by bisection on `t_cdf` (to 1e-12 relative), on [0, hi] for p > 1/2 with hi doubled until
    it brackets the root; :math:`t_{1-p} = -t_p` by symmetry. E.g. ``t_quantile(0.975, 1)`` =
    12.7062, ``t_quantile(0.975, 2)`` = 4.3027, ``t_quantile(0.975, 29)`` = 2.0452.

    Args:
      p: the probability, in (0, 1).
      df: degrees of freedom, > 0.

    Raises:
      ValueError: p outside (0, 1) or df not positive.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile needs 0 < p < 1, got {p}")
    if not df > 0:
        raise ValueError(f"t_quantile needs df > 0, got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return 0.5 * (lo + hi)


# ----------------------------------------------------------------------------- estimates


@dataclasses.dataclass(frozen=True)
class Estimate:
    r"""A mean over trials with its Student's t confidence interval.

    For values :math:`x_1, \dots, x_n`:

    .. math::
        \bar x = \frac1n \sum_i x_i, \qquad
        s = \sqrt{\frac{1}{n - 1} \sum_i (x_i - \bar x)^2}, \qquad
        \bar x \pm t_{(1+c)/2,\, n-1} \frac{s}{\sqrt n}

    and the two-sided t test of a true mean of 0 (meaningful when the values are paired
    differences): :math:`t = \bar x / (s / \sqrt n)`, :math:`p = 2 (1 - F(|t|; n - 1))`.

    Fields are None where undefined: everything for n = 0; `sd`, `low`, `high`, `half_width`,
    `t` and `p` for n = 1 (one trial has no spread, so no interval).

    Attributes:
      n: the number of values.
      mean: their mean.
      sd: their sample standard deviation (n − 1 in the denominator).
      low, high: the confidence interval, ``mean ∓ half_width``.
      half_width: ``t_{(1+c)/2, n−1} · sd / √n`` (≥ 0, so error bars drawn from it are never
        negative).
      confidence: c, e.g. 0.95.
      t: the t statistic of the test of mean 0 (±inf when sd = 0 and mean ≠ 0, 0 when both are 0).
      p: its two-sided p value.
    """

    n: int
    mean: float | None
    sd: float | None
    low: float | None
    high: float | None
    half_width: float | None
    confidence: float = CONFIDENCE
    t: float | None = None
    p: float | None = None

    @property
    def has_interval(self) -> bool:
        """Whether there is an interval (n ≥ 2)."""
        return self.half_width is not None


def _mean(xs: list[float]) -> float:
    # Divided first, so that a sum of large finite values cannot overflow; fsum rounds once.
    n = len(xs)
    if min(xs) == max(xs):
        return xs[0]  # equal values: exactly that value, not a rounding error away from it
    return math.fsum(x / n for x in xs)


def _sd(xs: list[float], mean: float) -> float:
    # Scaled by the largest deviation, so that squaring cannot overflow or underflow.
    if min(xs) == max(xs):
        return 0.0
    deviations = [x - mean for x in xs]
    scale = max(abs(d) for d in deviations)
    if not math.isfinite(scale):
        return math.inf
    return scale * math.sqrt(math.fsum((d / scale) ** 2 for d in deviations) / (len(xs) - 1))


def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE) -> Estimate:
    r"""The mean of `values` with its Student's t confidence interval (see `Estimate` for the math).

    Args:
      values: finite floats, one per trial (callers drop missing and non-finite values first).
      confidence: the interval's confidence level c, in (0, 1).

    Returns:
      An `Estimate`. For values 1, 2, 3, 4 (mean 2.5, sd 1.2910): the 95% interval is
      2.5 ± 3.1824 · 1.2910 / 2 = [0.4457, 4.5543].

    Raises:
      ValueError: a value is not finite, or confidence is outside (0, 1).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    xs = [float(v) for v in values]
    if not all(math.isfinite(x) for x in xs):
        raise ValueError(f"mean_ci needs finite values, got {xs}")
    n = len(xs)
    if n == 0:
        return Estimate(0, None, None, None, None, None, confidence)
    mean = _mean(xs)
    if n == 1:
        return Estimate(1, mean, None, None, None, None, confidence)
    sd = _sd(xs, mean)
    se = sd / math.sqrt(n)
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * se
    if se > 0:
        t = mean / se
    else:
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    p = 2.0 * (1.0 - t_cdf(abs(t), n - 1)) if math.isfinite(t) else 0.0
    return Estimate(n, mean, sd, mean - half, mean + half, half, confidence, t, min(1.0, p))


def paired_difference(
    a: Mapping[int, float], b: Mapping[int, float], confidence: float = CONFIDENCE
) -> Estimate:
    r"""The mean of the within-trial differences ``a[trial] − b[trial]`` over the trials both have,
    with its confidence interval and the paired t test:

    .. math::
        d_i = a_i - b_i, \qquad \bar d \pm t_{(1+c)/2,\, n-1} \frac{s_d}{\sqrt n}

    A trial present on one side only is left out (a diverged or missing run has no partner).

    Args:
      a, b: trial index -> finite value (e.g. ticket and reinit accuracy at one density).
      confidence: the interval's confidence level.

    Returns:
      `mean_ci` of the differences. E.g. a = {0: 0.9, 1: 0.8, 2: 0.85}, b = {0: 0.8, 1: 0.75,
      2: 0.85} give d = 0.1, 0.05, 0 and 0.05 ± 4.3027 · 0.05 / √3 = [−0.0742, 0.1742].
    """
    trials = sorted(set(a) & set(b))
    return mean_ci([a[t] - b[t] for t in trials], confidence)


# ----------------------------------------------------------------------------- censoring


def censored(early_stop_iteration: float, last_evaluation: float) -> bool:
    """Whether an early-stopping iteration is censored: the minimum validation loss came at the last
    evaluation, so the loss may still have been falling and the run's true early stop is at that
    iteration *or later* (a lower bound). A longer budget (``train.iterations``) could move it.

    Args:
      early_stop_iteration: the recorded iteration of the minimum validation loss.
      last_evaluation: the iteration of the run's last evaluation (its budget).
    """
    return early_stop_iteration >= last_evaluation


# ----------------------------------------------------------------------------- the verdict


WINNING = "winning"
NOT_WINNING = "not winning"
NOT_SHOWN = "not shown"
NO_VERDICT = "no verdict"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The verdict on one ticket (see `winning_verdict`): `label` is one of "winning", "not
    winning", "not shown" or "no verdict"; `reason` says why in a few words."""

    label: str
    reason: str


def winning_verdict(
    accuracy: Estimate,
    early_stop: Estimate,
    *,
    stop_margin: float,
    accuracy_margin: float = ACCURACY_MARGIN,
    ticket_censored: bool = False,
    dense_censored: bool = False,
) -> Verdict:
    r"""Is this ticket a *winning ticket*? A verdict from paired confidence intervals.

    The paper calls a subnetwork a winning ticket when, trained in isolation from its original
    initialisation, it reaches the dense network's test accuracy in at most as many iterations.
    Point comparisons of means decide that on noise (a 0.01 pp difference flips it), so this rule
    asks the paired intervals of ticket − dense (same trial, same θ₀) instead. With accuracy
    interval :math:`[a_-, a_+]` of ticket − dense test accuracy at early stop, early-stop interval
    :math:`[s_-, s_+]` of ticket − dense early-stopping iteration, margins δ (accuracy) and m
    (iterations, typically one evaluation interval):

    - **winning**: :math:`a_- \ge -δ` and :math:`s_+ \le m`: the ticket is shown to lose at most δ
      of accuracy and to stop at most m iterations later;
    - **not winning**: :math:`a_+ < -δ` or :math:`s_- > m`: it is shown to lose more than δ or to
      stop more than m iterations later;
    - **not shown**: otherwise (an interval straddles its margin);
    - **no verdict**: fewer than two paired trials (no interval).

    Censoring (`censored`): a censored early stop is a lower bound. If the ticket's is censored in
    some trial, ticket − dense is a lower bound too: "stops later" may still be shown, "not later"
    cannot. If the dense network's is, the difference is an upper bound: the reverse.

    Args:
      accuracy: `paired_difference` of ticket − dense test accuracy at early stop (fractions).
      early_stop: `paired_difference` of ticket − dense early-stopping iteration.
      stop_margin: m, in iterations.
      accuracy_margin: δ, as a fraction (default `ACCURACY_MARGIN`, 0.5 pp).
      ticket_censored: some trial's ticket stopped at its last evaluation.
      dense_censored: some trial's dense network stopped at its last evaluation.
    """
    if not (accuracy.has_interval and early_stop.has_interval):
        n = min(accuracy.n, early_stop.n)
        return Verdict(NO_VERDICT, f"{n} paired trial{'s' * (n != 1)}: no interval")
    assert accuracy.low is not None and accuracy.high is not None
    assert early_stop.low is not None and early_stop.high is not None
    pp = 100.0 * accuracy_margin
    if accuracy.high < -accuracy_margin:
        return Verdict(NOT_WINNING, f"accuracy shown more than {pp:g} pp below dense")
    if early_stop.low > stop_margin and not dense_censored:
        return Verdict(NOT_WINNING, f"early stop shown more than {stop_margin:g} iterations later")
    accuracy_ok = accuracy.low >= -accuracy_margin
    stop_ok = early_stop.high <= stop_margin and not ticket_censored
    if accuracy_ok and stop_ok:
        return Verdict(WINNING,
                       f"accuracy within {pp:g} pp of dense or above, early stop not later")
    reasons = []
    if not accuracy_ok:
        reasons.append(f"accuracy interval reaches below −{pp:g} pp")
    if not stop_ok:
        reasons.append("ticket's early stop censored" if ticket_censored and
                       early_stop.high <= stop_margin else
                       f"early-stop interval reaches above +{stop_margin:g} iterations")
    return Verdict(NOT_SHOWN, "; ".join(reasons))


def few_trials_note(n: int, confidence: float = CONFIDENCE) -> str | None:
    """A sentence for a reader when `n` trials make the interval wide (n ≤ 3), else None: e.g. for
    n = 2, "With 2 trials the 95% interval is the mean ± 12.71 standard errors (t with 1 degree of
    freedom): wide, and a difference inside it is not evidence either way."."""
    if n < 2:
        return (f"With {n} trial{'s' * (n != 1)} there is no confidence interval and no verdict: "
                "the numbers are single measurements.")
    if n > 3:
        return None
    t = t_quantile(0.5 + confidence / 2.0, n - 1)
    return (f"With {n} trials the {confidence:.0%} interval is the mean ± {t:.2f} standard errors "
            f"(t with {n - 1} degree{'s' * (n != 2)} of freedom): wide, and a difference inside it "
            "is not evidence either way.")
