"""Bootstrap intervals of corpus metrics: against a loop over the same resamples, against jiwer, paired differences."""

import jiwer
import numpy as np
import pytest

from speechssl.bootstrap import (
    Ratio,
    bootstrap_interval,
    excludes_zero,
    paired_difference_interval,
    percentile_interval,
    read_outcomes,
    resample_indices,
    resampled,
    separated,
    write_outcomes,
)
from speechssl.errors import ConfigError

ACCURACY = Ratio("correct")
ERROR_RATE = Ratio("errors", "length")


def flags(n, p, seed):
    rng = np.random.default_rng(seed)
    return [{"correct": int(c)} for c in rng.random(n) < p]


def edits(n, seed):
    rng = np.random.default_rng(seed)
    return [{"errors": int(e), "length": int(m)} for e, m in zip(rng.integers(0, 6, n), rng.integers(1, 12, n))]


def loop_interval(outcomes, metric, index, level=0.95):
    """The percentile interval written out: the metric of each resample in turn, then its quantiles."""
    values = [metric([outcomes[i] for i in row]) for row in index]
    return tuple(np.quantile(values, [(1 - level) / 2, (1 + level) / 2]))


@pytest.mark.parametrize("metric, outcomes", [(ACCURACY, flags(57, 0.6, 0)), (ERROR_RATE, edits(43, 1))],
                         ids=["accuracy", "error rate"])
def test_vectorized_interval_equals_a_loop_over_the_same_resamples(metric, outcomes):
    index = np.random.default_rng(7).integers(0, len(outcomes), size=(300, len(outcomes)))
    assert np.array_equal(resample_indices(len(outcomes), resamples=300, seed=7), index)
    expected = loop_interval(outcomes, metric, index, level=0.9)
    assert bootstrap_interval(outcomes, metric, resamples=300, level=0.9, seed=7) == expected
    # any other metric function takes the loop path: the same numbers
    by_hand = bootstrap_interval(outcomes, lambda o: metric(o), resamples=300, level=0.9, seed=7)
    assert by_hand == expected


def test_ratio_is_the_corpus_metric_of_jiwer():
    refs = ["a b c d", "b c", "e f g", "a", "c d e f g h"]
    hyps = ["a c d", "b c a", "", "b", "c d e x g h"]
    per_pair = [jiwer.process_words(r, h) for r, h in zip(refs, hyps)]
    outcomes = [{"errors": o.substitutions + o.deletions + o.insertions, "length": len(o.references[0])}
                for o in per_pair]
    assert ERROR_RATE(outcomes) == jiwer.wer(refs, hyps)  # exactly: the same integer totals
    index = resample_indices(len(refs), resamples=25, seed=3)
    values = resampled(outcomes, ERROR_RATE, index)
    for row, value in zip(index, values):  # each resample's rate is jiwer's on the resampled corpus
        assert value == pytest.approx(jiwer.wer([refs[i] for i in row], [hyps[i] for i in row]), rel=1e-12)


def test_interval_is_deterministic_contains_the_estimate_and_narrows_with_more_utterances():
    small, large = flags(100, 0.7, 0), flags(2000, 0.7, 0)
    assert bootstrap_interval(small, ACCURACY, seed=1) == bootstrap_interval(small, ACCURACY, seed=1)
    assert bootstrap_interval(small, ACCURACY, seed=1) != bootstrap_interval(small, ACCURACY, seed=2)
    for outcomes in (small, large):
        low, high = bootstrap_interval(outcomes, ACCURACY)
        assert low < ACCURACY(outcomes) < high
    (a, b), (c, d) = bootstrap_interval(small, ACCURACY), bootstrap_interval(large, ACCURACY)
    assert d - c < (b - a) / 2  # the width shrinks as 1/sqrt(N): 20x the utterances, about 1/4.5 the width
    assert bootstrap_interval([{"correct": 1}] * 5, ACCURACY) == (1.0, 1.0)


def test_paired_difference_separates_what_overlapping_intervals_cannot():
    base = flags(300, 0.6, 0)
    better = [dict(o) for o in base]
    for o in better[:24]:  # right on 24 more utterances (at most 8 points up), wrong on none more
        o["correct"] = 1
    gain = ACCURACY(better) - ACCURACY(base)
    assert 0 < gain < 0.08
    alone_a, alone_b = bootstrap_interval(better, ACCURACY), bootstrap_interval(base, ACCURACY)
    assert not separated(alone_a, alone_b)  # each interval is some ±5.5 points wide
    paired = paired_difference_interval(better, base, ACCURACY)
    assert excludes_zero(paired) and paired[0] <= gain <= paired[1]
    index = resample_indices(300)
    diffs = [ACCURACY([better[i] for i in row]) - ACCURACY([base[i] for i in row]) for row in index]
    assert paired == pytest.approx(tuple(np.quantile(diffs, [0.025, 0.975])), abs=1e-12)
    assert paired_difference_interval(base, base, ACCURACY) == (0.0, 0.0)
    assert separated((0.1, 0.2), (0.25, 0.3)) and separated((0.25, 0.3), (0.1, 0.2))
    assert not separated((0.1, 0.26), (0.25, 0.3)) and not excludes_zero((-0.01, 0.3))


def test_bad_arguments():
    with pytest.raises(ValueError, match="level=1.5"):
        percentile_interval(np.zeros(3), level=1.5)
    with pytest.raises(ValueError, match="bootstrap over 0 utterances"):
        bootstrap_interval([], ACCURACY)
    with pytest.raises(ValueError, match="3 and 2 outcomes"):
        paired_difference_interval(flags(3, 0.5, 0), flags(2, 0.5, 0), ACCURACY)


def test_outcomes_file_round_trip_and_errors(tmp_path):
    outcomes = edits(4, 0)
    write_outcomes(tmp_path / "o.tsv", ["u1", "u2", "u3", "u4"], outcomes)
    assert (tmp_path / "o.tsv").read_text().splitlines()[0] == "id\terrors\tlength"
    assert read_outcomes(tmp_path / "o.tsv") == (["u1", "u2", "u3", "u4"], outcomes)
    (tmp_path / "bad.tsv").write_text("id\terrors\tlength\nu1\t2\t5\nu2\ttwo\t5\n")
    with pytest.raises(ConfigError, match=r"bad.tsv:3: not a line of numeric outcomes"):
        read_outcomes(tmp_path / "bad.tsv")
    trials = [{"label": 1, "score": 0.1 + 0.2}, {"label": 0, "score": -1e-17}]  # scores: floats, bit for bit
    write_outcomes(tmp_path / "t.tsv", ["a|b", "a|c"], trials)
    assert read_outcomes(tmp_path / "t.tsv") == (["a|b", "a|c"], trials)
    (tmp_path / "bad.tsv").write_text("utt\terrors\n")
    with pytest.raises(ConfigError, match=r"bad.tsv: not an outcomes table"):
        read_outcomes(tmp_path / "bad.tsv")
