"""Genre segments (keras_mgc.segments) on synthetic probability matrices.

The algorithm must match the browser page's exactly, so every rule of the specification in
the module docstring has a test here: the boundary formula and its clamp, the hysteresis
(against the current segment's genre, >= inclusive), argmax ties, the minimum length (the
shortest first, ties earliest; the neighbour with the higher mean; ties to the previous;
cascades; same-genre joins) and the output's mean probability. Real music is in test_tag.py.
"""

from __future__ import annotations


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_mgc.segments import Segment, audacity_labels, segment_windows

NAMES = ["a", "b", "c", "d", "e"]


def rows(spec: list[tuple[str, int]], strength: float = 0.8) -> np.ndarray:
    """One row per window: `strength` on the named class, the rest spread evenly."""
    out = []
    for name, count in spec:
        row = np.full(len(NAMES), (1 - strength) / (len(NAMES) - 1))
        row[NAMES.index(name)] = strength
        out.extend([row] * count)
    return np.array(out)


def run(P, min_segment=0.0, hysteresis=0.1, window=1.0, hop=1.0, duration=None, starts=None):
    """Windows every `hop` seconds from 0 (window == hop puts boundaries on window starts)."""
    P = np.asarray(P, np.float64)
    starts = np.arange(len(P)) * hop if starts is None else starts
    duration = len(P) * hop if duration is None else duration
    return segment_windows(P, starts, window, hop, duration, NAMES[: P.shape[1]], hysteresis, min_segment)


def spans(segs: list[Segment]) -> list[tuple[float, float, str]]:
    return [(s.start, s.end, s.genre) for s in segs]


def literal_segments(P, s, W, H, D, names, h, m):
    """The specification transcribed step by step, without the library's bookkeeping (slow):
    the reference the library must equal. Segments are [start, end, genre, windows]."""
    segs = [[0.0, None, int(np.argmax(P[0])), [0]]]
    for i in range(1, len(P)):
        c, g = int(np.argmax(P[i])), segs[-1][2]
        if c != g and P[i, c] - P[i, g] >= h:
            t = min(max(s[i] + (W - H) / 2, 0.0), D)
            segs[-1][1] = t
            segs.append([t, None, c, []])
        segs[-1][3].append(i)
    segs[-1][1] = D
    while len(segs) > 1 and any(e - b < m for b, e, _, _ in segs):
        k = min(range(len(segs)), key=lambda j: (segs[j][1] - segs[j][0], j))
        short = segs[k]
        if k == 0 or k == len(segs) - 1:
            into = 1 if k == 0 else k - 1
        else:
            means = [mean(P[short[3], segs[j][2]]) for j in (k - 1, k + 1)]
            into = k + 1 if means[1] > means[0] else k - 1
        target = segs[into]
        target[0], target[1] = min(target[0], short[0]), max(target[1], short[1])
        target[3] = sorted(target[3] + short[3])
        del segs[k]
        joined = [segs[0]]
        for seg in segs[1:]:
            if seg[2] == joined[-1][2]:
                joined[-1][1] = seg[1]
                joined[-1][3] += seg[3]
            else:
                joined.append(seg)
        segs = joined
    return [(b, e, names[g], mean(P[w, g])) for b, e, g, w in segs]


def mean(values) -> float:
    """Left to right, as the specification's arithmetic says (and JavaScript's loop does)."""
    total = 0.0
    for v in values:
        total += float(v)
    return total / len(values)


def test_one_window_is_one_segment_over_the_song():
    (seg,) = segment_windows([[0.1, 0.7, 0.2]], [0.0], 2.01, 1.0, 0.8, ["x", "y", "z"])
    assert (seg.start, seg.end, seg.genre, seg.first_window, seg.stop_window) == (0.0, 0.8, "y", 0, 1)
    assert seg.probability == pytest.approx(0.7)


def test_boundary_is_the_midpoint_between_window_centres():
    """The tagger's default 2.01 s windows every 1 s: a switch at window i falls at s_i + 0.505."""
    P = rows([("a", 12), ("c", 9)])
    starts = np.arange(21.0)
    segs = segment_windows(P, starts, 2.01, 1.0, 22.01, NAMES, min_segment=0)
    t = 12.0 + (2.01 - 1.0) / 2  # exactly the specified float64 expression (12.504999999999999)
    assert spans(segs) == [(0.0, t, "a"), (t, 22.01, "c")]
    assert [seg.as_dict()["end"] for seg in segs] == [12.505, 22.01]  # rounded when printed
    assert [(s.first_window, s.stop_window) for s in segs] == [(0, 12), (12, 21)]
    # window 12 is centred at 13.005 and window 11 at 12.005: the midpoint
    assert segs[0].end == pytest.approx(((11 + 1.005) + (12 + 1.005)) / 2)


def test_boundary_is_clamped_to_the_song():
    """A hop far longer than the window puts s_i + (W - H) / 2 before 0: clamped to 0."""
    P = rows([("a", 1), ("b", 1)])
    # windows of 2 s at 0 and at the tail (1 s) of a 3 s song, hop 100 s
    segs = segment_windows(P, [0.0, 1.0], 2.0, 100.0, 3.0, NAMES, min_segment=0)
    assert spans(segs) == [(0.0, 0.0, "a"), (0.0, 3.0, "b")]
    # with a minimum length the empty segment is merged away
    assert spans(segment_windows(P, [0.0, 1.0], 2.0, 100.0, 3.0, NAMES, min_segment=0.5)) == [(0.0, 3.0, "b")]


def test_hop_longer_than_window_puts_the_boundary_in_the_gap():
    P = rows([("a", 2), ("b", 2)])
    segs = segment_windows(P, [0.0, 5.0, 10.0, 15.0], 2.0, 5.0, 17.0, NAMES, min_segment=0)
    assert spans(segs) == [(0.0, 8.5, "a"), (8.5, 17.0, "b")]  # between 7.0 (end of window 1) and 10.0


def test_hysteresis_is_inclusive_and_against_the_current_genre():
    # exact binary fractions, so the differences are exact in float64
    P = np.array([[0.75, 0.25], [0.375, 0.625], [0.375, 0.625]])
    assert spans(run(P, hysteresis=0.25)) == [(0.0, 1.0, "a"), (1.0, 3.0, "b")]  # lead 0.25 >= 0.25
    assert spans(run(P, hysteresis=0.25 + 1e-12)) == [(0.0, 3.0, "a")]
    assert spans(run(P, hysteresis=0.0)) == [(0.0, 1.0, "a"), (1.0, 3.0, "b")]
    # the lead is measured against the segment's genre, not the previous window's top class
    P = np.array([
        [0.8, 0.1, 0.1],
        [0.45, 0.5, 0.05],  # b leads a by 0.05: no switch, the segment stays a
        [0.05, 0.35, 0.6],  # c leads a (the segment's genre) by 0.55: switch to c
        [0.05, 0.5, 0.45],  # b leads c by 0.05: no switch
        [0.0, 0.25, 0.75],
    ])
    segs = run(P)
    assert spans(segs) == [(0.0, 2.0, "a"), (2.0, 5.0, "c")]
    assert [(s.first_window, s.stop_window) for s in segs] == [(0, 2), (2, 5)]
    assert segs[0].probability == pytest.approx((0.8 + 0.45) / 2)  # mean of P[:, a] over its windows
    assert segs[1].probability == pytest.approx((0.6 + 0.45 + 0.75) / 3)


def test_argmax_ties_go_to_the_lowest_index():
    P = np.array([[0.4, 0.4, 0.2], [0.1, 0.45, 0.45], [0.1, 0.45, 0.45]])
    segs = run(P, hysteresis=0.0)
    # window 0: a (tie a/b); windows 1-2: b (tie b/c, lead over a 0.35)
    assert spans(segs) == [(0.0, 1.0, "a"), (1.0, 3.0, "b")]


def test_short_segment_merges_into_the_neighbour_with_the_higher_mean():
    def middle(a, b, c):
        P = np.concatenate([rows([("a", 20)]), np.tile([a, b, c, 0, 0], (3, 1)), rows([("c", 20)])])
        return spans(run(P, min_segment=5))

    assert middle(0.2, 0.5, 0.3) == [(0.0, 20.0, "a"), (20.0, 43.0, "c")]  # c's mean 0.3 > a's 0.2
    assert middle(0.3, 0.5, 0.2) == [(0.0, 23.0, "a"), (23.0, 43.0, "c")]
    assert middle(0.25, 0.5, 0.25) == [(0.0, 23.0, "a"), (23.0, 43.0, "c")]  # tie: the previous


def test_segments_at_the_ends_merge_into_their_only_neighbour():
    # the short end segments prefer nothing in particular: they have one neighbour
    P = rows([("b", 2), ("a", 30), ("c", 3)])
    assert spans(run(P, min_segment=5)) == [(0.0, 35.0, "a")]


def test_shortest_first_with_ties_to_the_earliest():
    """b and c are both 3 s: b goes first (into c, which then is 6 s long and stays).
    Taking c first would merge it into b instead."""
    P = np.concatenate([
        rows([("a", 10)]),
        np.tile([0.1, 0.6, 0.3, 0.0, 0.0], (3, 1)),  # b's windows prefer c (0.3) to a (0.1)
        np.tile([0.0, 0.3, 0.6, 0.1, 0.0], (3, 1)),  # c's windows prefer b (0.3) to d (0.1)
        rows([("d", 10)]),
    ])
    segs = run(P, min_segment=4)
    assert spans(segs) == [(0.0, 10.0, "a"), (10.0, 16.0, "c"), (16.0, 26.0, "d")]
    assert (segs[1].first_window, segs[1].stop_window) == (10, 16)
    assert segs[1].probability == pytest.approx((3 * 0.3 + 3 * 0.6) / 6)  # over both parts' windows


def test_merged_segment_still_too_short_merges_again():
    P = np.concatenate([
        rows([("a", 10)]),
        np.tile([0.1, 0.6, 0.3, 0.0, 0.0], (2, 1)),  # b -> c
        np.tile([0.3, 0.1, 0.6, 0.0, 0.0], (2, 1)),
        rows([("d", 10)]),
    ])
    # b+c (as c) is 4 s < 5: its windows' means are a (0.2) vs d (0.0): into a
    assert spans(run(P, min_segment=5)) == [(0.0, 14.0, "a"), (14.0, 24.0, "d")]


def test_same_genre_neighbours_are_joined_after_a_merge():
    P = rows([("a", 10), ("b", 2), ("a", 10), ("c", 10)])
    segs = run(P, min_segment=5)
    assert spans(segs) == [(0.0, 22.0, "a"), (22.0, 32.0, "c")]
    assert (segs[0].first_window, segs[0].stop_window) == (0, 22)
    assert segs[0].probability == pytest.approx((20 * 0.8 + 2 * 0.05) / 22)


def test_everything_shorter_than_the_minimum_becomes_one_segment():
    P = rows([("a", 3), ("b", 4), ("c", 3)])
    segs = run(P, min_segment=60)
    assert len(segs) == 1 and (segs[0].start, segs[0].end) == (0.0, 10.0)


def test_no_merging_when_every_segment_is_long_enough():
    P = rows([("a", 10), ("b", 10)])
    assert spans(run(P, min_segment=10)) == [(0.0, 10.0, "a"), (10.0, 20.0, "b")]  # 10 is not < 10


def test_audacity_label_track():
    segs = run(rows([("a", 12), ("c", 9)]), window=2.01, starts=np.arange(21.0), duration=22.01)
    assert audacity_labels(segs) == "0.000000\t12.505000\ta\n12.505000\t22.010000\tc\n"
    assert segs[0].as_dict() == {"start": 0.0, "end": 12.505, "genre": "a", "probability": 0.8}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(probabilities=np.zeros((0, 5))), "non-empty"),
        (dict(probabilities=np.full((2, 5), np.nan)), "NaN"),
        (dict(probabilities=np.full((2, 4), 0.25)), "4 classes but 5 class names"),
        (dict(starts=[0.0]), "2 windows need 2 start times"),
        (dict(starts=[1.0, 1.0]), "strictly increasing"),
        (dict(window=0.0), "window must be"),
        (dict(duration=float("inf")), "duration must be"),
        (dict(hysteresis=-0.1), "hysteresis"),
        (dict(min_segment=float("nan")), "min_segment"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    args = dict(probabilities=np.full((2, 5), 0.2), starts=[0.0, 1.0], window=2.0, hop=1.0, duration=3.0,
                class_names=NAMES) | kwargs
    with pytest.raises(ValueError, match=match):
        segment_windows(**args)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 60).flatmap(
        lambda n: st.tuples(
            st.lists(st.lists(st.floats(0, 1), min_size=3, max_size=3), min_size=n, max_size=n),
            st.sampled_from([0.0, 0.05, 0.1, 0.3]),
            st.sampled_from([0.0, 2.0, 5.0, 10.0]),
            st.sampled_from([(2.01, 1.0), (1.0, 1.0), (1.0, 3.0)]),
        )
    )
)
def test_segments_tile_the_song(case):
    """Whatever the probabilities: contiguous segments over [0, D] holding every window once,
    neighbours of different genres, none shorter than the minimum unless it is the only one."""
    raw, hysteresis, min_segment, (window, hop) = case
    P = np.asarray(raw) + 1e-3
    P /= P.sum(axis=1, keepdims=True)
    n = len(P)
    starts = np.arange(n) * hop
    duration = starts[-1] + window
    segs = segment_windows(P, starts, window, hop, duration, NAMES[:3], hysteresis, min_segment)
    assert segs[0].start == 0.0 and segs[-1].end == duration
    assert segs[0].first_window == 0 and segs[-1].stop_window == n
    for left, right in zip(segs, segs[1:]):
        assert left.end == right.start and left.stop_window == right.first_window
        assert left.genre != right.genre
    assert all(s.first_window < s.stop_window for s in segs)
    if len(segs) > 1:
        assert all(s.duration >= min_segment for s in segs)
    for s in segs:
        k = NAMES.index(s.genre)
        assert s.probability == pytest.approx(P[s.first_window : s.stop_window, k].mean())
    if min_segment == 0.0 and hysteresis == 0.0:  # no smoothing: one segment per run of argmax
        top = P.argmax(axis=1)
        assert len(segs) == 1 + int((top[1:] != top[:-1]).sum())


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 80).flatmap(
        lambda n: st.tuples(
            st.lists(st.lists(st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.5, 1.0]), min_size=4, max_size=4),
                     min_size=n, max_size=n),
            st.sampled_from([0.0, 0.05, 0.1, 0.2]),
            st.sampled_from([0.0, 1.5, 3.0, 10.0, 1000.0]),
            st.sampled_from([(2.01, 1.0), (1.0, 1.0), (2.0, 0.5), (1.0, 3.0)]),
        )
    )
)
def test_library_equals_the_literal_specification(case):
    """Coarse probability values make argmax ties and equal neighbour means common."""
    raw, h, m, (W, H) = case
    P = np.asarray(raw) + 1e-9
    P /= P.sum(axis=1, keepdims=True)
    s = np.arange(len(P)) * H
    D = s[-1] + W
    got = segment_windows(P, s, W, H, D, NAMES[:4], h, m)
    assert [(x.start, x.end, x.genre, x.probability) for x in got] == literal_segments(P, s, W, H, D, NAMES, h, m)
