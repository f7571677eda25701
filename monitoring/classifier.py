"""The domain classifier: can a linear model on the prompts' character and word n-grams tell the window from the
reference? One multivariate signal over the text itself, beside the per-feature tests.

The classifier two-sample test (Lopez-Paz & Oquab, 2017; the idea behind Evidently's text drift): both samples are
split in halves; a logistic regression on TF-IDF n-grams (reference 0, window 1) is fitted on one half and scores
the other. With no drift the held-out labels are exchangeable given those scores, so two tests apply to them:

* the rank test (Mann-Whitney U, whose statistic is the ROC AUC; scipy's normal approximation at these sizes)
  sees a shift of the whole window;
* the tail test (Fisher's exact test on who lands in the top decile of all held-out scores, a label-blind cut)
  sees a minority of new prompts, which a rank test dilutes: a tenth of the window being new moves the AUC by at
  most 0.05, but about doubles the window's share of the top decile.

The p-value is the smaller of the two, doubled (Bonferroni over the pair). Evidently alerts at a fixed AUC > 0.55,
which is noise at 100 prompts and a trivial difference at 100,000: here significance is calibrated by the sample
sizes, and the effect the policy asks for is the share of the window that is new (``new_share``, the mixture bound
from the tail: 2 AUC - 1 bounds it too, but is about twice as noisy).

The vocabulary is fitted on the training half rather than hashed: its names are what the report shows as "what
changed" (the n-grams with the largest weights each way), and fitting one on a few thousand prompts is cheap.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import FeatureUnion

MIN_PER_SIDE = 40  # each half then holds at least 20 prompts a side: fewer, and the fitted weights are noise
MAX_CHARS = 2000  # characters of a prompt the classifier reads (the cost grows with them)
TAIL = 0.10  # the top share of held-out scores the tail test counts
_SEED = 0  # the same two samples always give the same split, hence the same result


@dataclass(frozen=True)
class ClassifierOutcome:
    auc: float
    p_rank: float
    p_tail: float
    p_value: float
    new_share: float
    n_reference: int
    n_current: int
    reference_ngrams: list[tuple[str, float]]
    current_ngrams: list[tuple[str, float]]
    seconds: float


def reference_texts(prompts: Sequence[object], size: int) -> list[str]:
    """What a reference profile keeps for the classifier: a seeded uniform sample of at most ``size`` non-empty
    prompts, each cut to ``MAX_CHARS``, in their original order."""
    texts = [p[:MAX_CHARS] for p in prompts if isinstance(p, str) and p.strip()]
    if len(texts) > size:
        texts = [texts[i] for i in np.sort(np.random.default_rng(_SEED).choice(len(texts), size, replace=False))]
    return texts


def _features() -> FeatureUnion:
    """Character n-grams inside word boundaries (spelling, punctuation, code syntax) and word uni/bigrams."""
    common = dict(min_df=2, sublinear_tf=True, dtype=np.float32)
    return FeatureUnion([
        ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), max_features=50_000, lowercase=False,
                                 **common)),
        ("word", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), token_pattern=r"(?u)\b\w+\b",
                                 max_features=20_000, **common)),
    ])


def _halves(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(n)
    return order[: n // 2], order[n // 2:]


def new_share_from_tail(ref_above: float, cur_above: float) -> float:
    """The least share ``s`` of the window that is new, if the window is ``(1 - s)`` reference plus ``s`` prompts
    that all score in the tail: ``cur_above = (1 - s) ref_above + s``. New prompts outside the tail only make the
    true share larger."""
    if ref_above >= 1.0:
        return 0.0
    return float(np.clip((cur_above - ref_above) / (1.0 - ref_above), 0.0, 1.0))


def held_out_tests(ref_scores: np.ndarray, cur_scores: np.ndarray, tail: float = TAIL) -> tuple[float, float, float,
                                                                                                  float]:
    """(AUC, rank-test p, tail-test p, least new share) of held-out classifier scores, window scores high."""
    labels = np.r_[np.zeros(ref_scores.size), np.ones(cur_scores.size)]
    scores = np.r_[ref_scores, cur_scores]
    auc = float(roc_auc_score(labels, scores))
    p_rank = float(stats.mannwhitneyu(cur_scores, ref_scores, alternative="greater").pvalue)
    cut = np.quantile(scores, 1.0 - tail, method="inverted_cdf")
    ref_above, cur_above = int((ref_scores > cut).sum()), int((cur_scores > cut).sum())
    table = [[cur_above, cur_scores.size - cur_above], [ref_above, ref_scores.size - ref_above]]
    p_tail = float(stats.fisher_exact(table, alternative="greater").pvalue)
    # the effect at the reference's own top decile: at the pooled one the window could fill at most twice the tail
    # (an exact test needs that label-blind cut; an estimate does not)
    ref_cut = np.quantile(ref_scores, 1.0 - tail, method="inverted_cdf")
    share = new_share_from_tail(float((ref_scores > ref_cut).mean()), float((cur_scores > ref_cut).mean()))
    return auc, p_rank, p_tail, share


def domain_classifier_test(reference: Sequence[str], current: Sequence[str], *, reference_sample: int = 2000,
                           window_sample: int = 2000, top: int = 12) -> ClassifierOutcome:
    """Whether ``current`` prompts can be told from ``reference`` prompts better than chance.

    Args:
        reference: Prompts of the reference (kept in the reference profile).
        current: Prompts of the window.
        reference_sample: At most this many reference prompts are used (a seeded uniform sample).
        window_sample: At most this many window prompts are used (a seeded uniform sample).
        top: How many n-grams to report each way.

    Raises:
        ValueError: Fewer than ``MIN_PER_SIDE`` non-empty prompts on a side.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(_SEED)
    sides = []
    for name, texts, size in (("reference", reference, reference_sample), ("window", current, window_sample)):
        # sorted before sampling: the same prompts in any order give the same result
        texts = reference_texts(sorted(t for t in texts if isinstance(t, str)), size)
        if len(texts) < MIN_PER_SIDE:
            raise ValueError(f"the {name} has {len(texts)} non-empty prompts; the domain classifier needs "
                             f"{MIN_PER_SIDE}")
        sides.append(texts)
    (ref_fit, ref_test), (cur_fit, cur_test) = (_halves(len(s), rng) for s in sides)
    pick = lambda texts, rows: [texts[i] for i in rows]  # noqa: E731
    features = _features()
    x_fit = features.fit_transform(pick(sides[0], ref_fit) + pick(sides[1], cur_fit))
    y_fit = np.r_[np.zeros(ref_fit.size), np.ones(cur_fit.size)]
    model = LogisticRegression(C=1.0, class_weight="balanced", solver="liblinear", max_iter=1000).fit(x_fit, y_fit)
    ref_scores = model.decision_function(features.transform(pick(sides[0], ref_test)))
    cur_scores = model.decision_function(features.transform(pick(sides[1], cur_test)))
    auc, p_rank, p_tail, share = held_out_tests(ref_scores, cur_scores)
    names, weights = features.get_feature_names_out(), model.coef_[0]
    order = np.argsort(weights)
    label = lambda i: f"{names[i].split('__', 1)[1]!r} ({names[i].split('__', 1)[0]})"  # noqa: E731
    return ClassifierOutcome(
        auc=auc, p_rank=p_rank, p_tail=p_tail, p_value=min(1.0, 2.0 * min(p_rank, p_tail)), new_share=share,
        n_reference=len(sides[0]), n_current=len(sides[1]),
        reference_ngrams=[(label(i), round(float(weights[i]), 4)) for i in order[:top] if weights[i] < 0],
        current_ngrams=[(label(i), round(float(weights[i]), 4)) for i in order[::-1][:top] if weights[i] > 0],
        seconds=round(time.perf_counter() - t0, 3),
    )
