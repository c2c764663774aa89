"""Windows, resampling, feature front ends, reading parsers and event hysteresis, apart from any device."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.events import EventDetector
from edge_agent.features import MICRO_BINS, IdentityFrontend, MicroFrontend, spectrogram
from edge_agent.resample import Resampler
from edge_agent.signals.readings import HEADER, MAX_VALUES, ReadingParser
from edge_agent.windowing import Windower


def _chunked(x: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    out, i = [], 0
    for n in sizes:
        if i >= len(x):
            break
        out.append(x[i : i + n])
        i += n
    if i < len(x):
        out.append(x[i:])
    return out


@settings(max_examples=300, deadline=None)
@given(
    length=st.integers(1, 40),
    hop=st.integers(1, 60),
    total=st.integers(0, 400),
    sizes=st.lists(st.integers(1, 90), min_size=1, max_size=60),
    channels=st.integers(1, 3),
)
def test_windows_are_exact_however_the_stream_is_chunked(
    length: int, hop: int, total: int, sizes: list[int], channels: int
) -> None:
    x = np.arange(total * channels, dtype=np.float32).reshape(total, channels)
    w = Windower(length, hop, channels)
    got = [win for part in _chunked(x, sizes) for win in w.push(part)]
    want = [x[s : s + length] for s in range(0, total - length + 1, hop)]
    assert len(got) == len(want)
    for g, e in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, e)
    if hop <= length and got:
        # every sample up to the last window's end is in some window exactly where it belongs
        seen = np.concatenate([win[:hop] for win in got[:-1]] + [got[-1]])
        np.testing.assert_array_equal(seen, x[: len(seen)])
    assert w.emitted == len(want) and w.consumed == total


def test_windower_reset_starts_a_new_stream() -> None:
    w = Windower(4, 2, 1)
    assert len(w.push(np.arange(5))) == 1
    w.reset()
    out = w.push(np.arange(100, 104))
    assert len(out) == 1 and out[0][0, 0] == 100


@pytest.mark.parametrize(
    ("fin", "fout"), [(48000, 16000), (44100, 16000), (8000, 16000), (22050, 16000), (44101, 16000), (999_983, 16000)]
)
def test_resampling_in_chunks_equals_resampling_at_once_and_keeps_the_tone(fin: int, fout: int) -> None:
    t = np.arange(fin) / fin
    x = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)[:, None]
    whole = Resampler(fin, fout).push(x)
    r = Resampler(fin, fout)
    rng = np.random.default_rng(0)
    parts = [r.push(c) for c in _chunked(x, list(rng.integers(1, 900, 200)))]
    chunked = np.concatenate(parts)
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    assert abs(len(whole) - fout) < 0.01 * fout  # only the filter's delay is still pending
    played = fin * r.up / r.down  # fout, or within 100 ppm of it where no small ratio reaches it exactly
    ref = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(len(whole)) / played)
    mid = slice(100, len(whole) - 100)
    assert np.abs(whole[mid, 0] - ref[mid]).max() < 1e-3
    spec = np.abs(np.fft.rfft(whole[:, 0]))
    assert abs(np.argmax(spec) * fout / len(whole) - 1000) < 2


def test_a_rate_with_no_small_ratio_to_the_models_gets_a_filter_of_bounded_size() -> None:
    """The filter was built at the exact ratio: a WAV header saying 999,983 Hz (a prime) made it 32
    million taps, 3.5 GB of RSS and 14 s in `predict` before the first window, and 2,147,483,647 Hz a
    MemoryError. Now the ratio is the nearest one of terms up to MAX_PHASES within 100 ppm (the tone
    test above plays through it), and rates that none comes close to are refused, naming both."""
    from edge_agent.resample import MAX_PHASES, ratio

    for fin in (999_983, 44_101, 47_999, 1_000_003, 16_001):
        up, down = ratio(fin, 16000)
        assert max(up, down) <= MAX_PHASES and abs(fin * up / down / 16000 - 1) <= 1e-4, (fin, up, down)
        r = Resampler(fin, 16000)
        assert r.up * r.taps <= 2 * 16 * MAX_PHASES + MAX_PHASES, (fin, r.up, r.taps)
    assert ratio(44100, 16000) == (160, 441) and ratio(8000, 16000) == (2, 1)  # usual rates stay exact
    for fin in (2**31 - 1, 10, 15):
        with pytest.raises(ValueError, match=f"cannot resample {fin} Hz to 16000 Hz"):
            Resampler(fin, 16000)


def test_resampling_removes_what_the_lower_rate_cannot_hold() -> None:
    fin = 48000
    t = np.arange(fin) / fin
    tone = np.sin(2 * np.pi * 11000 * t).astype(np.float32)[:, None]  # above 8 kHz: would alias to 5 kHz
    y = Resampler(fin, 16000).push(tone)[200:-200]
    assert np.sqrt(np.mean(y**2)) < 0.01


def test_identity_frontend_scales_per_channel() -> None:
    fe = IdentityFrontend(offset=[1.0, 2.0], scale=[10.0, 0.5])
    np.testing.assert_allclose(fe.push(np.array([[2.0, 4.0]])), [[10.0, 1.0]])


def test_micro_frontend_streams_40_bins_every_10_ms_however_chunked() -> None:
    rng = np.random.default_rng(1)
    audio = (rng.standard_normal(16000) * 0.1).astype(np.float32)[:, None]
    whole = MicroFrontend().push(audio)
    fe = MicroFrontend()
    parts = np.concatenate([fe.push(c) for c in _chunked(audio, list(rng.integers(1, 700, 100)))])
    assert whole.shape[1] == MICRO_BINS and abs(len(whole) - 98) <= 2  # 30 ms windows every 10 ms over 1 s
    np.testing.assert_allclose(parts, whole, atol=1e-5)


def test_micro_frontend_hears_samples_that_are_not_numbers_as_silence() -> None:
    """A float recording (or a driver gone wrong) with NaN or infinite samples: cast to 16-bit PCM as they
    are, they become whatever the cast makes of them (and a RuntimeWarning); they are silence, and an
    infinity the loudest sample of its sign."""
    rng = np.random.default_rng(2)
    audio = (rng.standard_normal(16000) * 0.1).astype(np.float32)[:, None]
    broken = audio.copy()
    broken[4000:8000] = np.nan
    broken[9000], broken[9001] = np.inf, -np.inf
    fixed = audio.copy()
    fixed[4000:8000] = 0.0
    fixed[9000], fixed[9001] = 1.0, -1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = MicroFrontend().push(broken)
    np.testing.assert_allclose(got, MicroFrontend().push(fixed), atol=1e-6)


def test_spectrogram_peaks_at_the_tone() -> None:
    t = np.arange(64) / 64.0
    win = np.stack([np.sin(2 * np.pi * 8 * t), np.sin(2 * np.pi * 20 * t)], axis=1).astype(np.float32)
    spec = spectrogram(win)
    assert spec.shape == (33, 2)
    assert int(np.argmax(spec[:, 0])) == 8 and int(np.argmax(spec[:, 1])) == 20


@pytest.mark.parametrize(
    ("line", "want"),
    [
        ("1.5,2,-3", [1.5, 2, -3]),
        ("1.5;2;-3\r\n", [1.5, 2, -3]),
        ("[1, 2]", [1, 2]),
        ('{"values": [4, 5]}', [4, 5]),
        ("7", [7]),
        ("ax,ay,az", []),  # a header: names, not a reading
        ("Calibrating...", None),
        ("1,nan", None),
        ("garbage", None),
        ("", None),
        ("\xff\xfe", None),
    ],
)
def test_reading_parser(line: str, want: list[float] | None) -> None:
    got = ReadingParser(None).parse(line)
    assert (got is None) if want is None else (got is not None and got.tolist() == want)
    assert (got is HEADER) == (want == [])


def test_a_header_line_names_the_columns_and_channels_pick_them() -> None:
    p = ReadingParser(None)
    assert p.parse("0.5,1,2,3").tolist() == [0.5, 1, 2, 3]  # type: ignore[union-attr]  # by position
    assert p.parse("Time (ms),ax,ay,az") is HEADER
    assert p.names == ["ax", "ay", "az"]
    assert p.parse("10,1,2,3").tolist() == [1, 2, 3]  # type: ignore[union-attr]  # the time column left out
    picked = ReadingParser(["az", "ax"])
    assert picked.parse("t;ax;ay;az\r\n") is HEADER
    assert picked.parse("10;1;2;3").tolist() == [3, 1]  # type: ignore[union-attr]
    assert picked.parse("10,1,2").tolist() == [10, 1, 2]  # type: ignore[union-attr]  # not its width
    # a line of names without the wanted channels is not taken for the header (counted as no reading)
    assert picked.parse("gx,gy,gz") is None and picked.parse("10,1,2,3").tolist() == [3, 1]  # type: ignore[union-attr]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=4), kids, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    _JSON.map(json.dumps),
    st.integers(1, 20_000).map(lambda n: "[" * n),  # nested past the JSON parser's depth
    st.integers(300, 500).map(lambda n: "[1" + "0" * n + "]"),  # an integer past a float's range
    st.integers(1, 3000).map(lambda n: ",".join(["1"] * n)),
))
def test_a_reading_parser_takes_anything_a_device_or_a_broker_sends(line: str | bytes) -> None:
    """A serial line or an MQTT message is whatever the other end sends: the parser never raises, and
    what it returns is no reading (None), a header, or a row of at most MAX_VALUES finite numbers."""
    p = ReadingParser(None)
    for _ in range(2):  # and again, after what the first one taught it (names, a header)
        got = p.parse(line)
        assert got is None or got is HEADER or (
            got.ndim == 1 and 0 < got.size <= MAX_VALUES and bool(np.isfinite(got).all())
        )


def test_an_object_without_numbers_does_not_name_the_channels() -> None:
    p = ReadingParser(None)
    assert p.parse('{"status": "booting"}') is None
    assert p.parse('{"ax": 1, "ay": 2}').tolist() == [1, 2]  # type: ignore[union-attr]


def test_reading_parser_keeps_the_first_objects_key_order() -> None:
    p = ReadingParser(None)
    assert p.parse('{"ts": 1, "x": 1, "y": 2}').tolist() == [1, 2]  # type: ignore[union-attr]
    assert p.parse('{"y": 5, "x": 4, "extra": 9}').tolist() == [4, 5]  # type: ignore[union-attr]
    assert p.parse('{"x": 4}') is None
    assert ReadingParser(["y"]).parse('{"x": 1, "y": 2}').tolist() == [2]  # type: ignore[union-attr]


def _run(det: EventDetector, scores: list[float], dt: float = 0.1) -> list[tuple[str, str]]:
    out = []
    for i, s in enumerate(scores):
        out += [(e.type, e.id) for e in det.update({"word": s, "other": 0.0}, i * dt, i * dt)]
    return out


def test_hysteresis_makes_a_flapping_score_one_event() -> None:
    scores = [0.1, 0.9, 0.6, 0.85, 0.55, 0.9, 0.7, 0.2, 0.1]  # dips below on (0.8) but not below off (0.5)
    events = _run(EventDetector(on=0.8, off=0.5), scores)
    assert [t for t, _ in events] == ["new", "end"]
    assert events[0][1] == events[1][1]


def test_without_hysteresis_the_same_scores_would_flap() -> None:
    scores = [0.1, 0.9, 0.6, 0.85, 0.55, 0.9, 0.7, 0.2, 0.1]
    assert [t for t, _ in _run(EventDetector(on=0.8, off=0.8), scores)].count("new") == 3


def test_a_wall_clock_set_back_does_not_stretch_the_refractory_period() -> None:
    """A live source's times follow the wall clock; set back an hour just after a word (a time server
    reached by a board without a real-time clock), the next word still raises its event."""
    det = EventDetector(on=0.8, off=0.5, refractory_s=1.0)
    ts, events = 1000.0, []
    for i, score in enumerate([0.9, 0.9, 0.2, 0.2] + [0.2] * 20 + [0.9, 0.9, 0.9, 0.2]):
        if i in (3, 25):  # set back just after the first word, and again during the second
            ts -= 3600.0
        events += [(e.type, e.start_ts, e.end_ts) for e in det.update({"word": score}, ts, i * 0.1)]
        ts += 0.1
    assert [e[0] for e in events] == ["new", "end", "new", "end"], events
    second_end = events[-1]
    assert 0 < second_end[2] - second_end[1] < 1.0, events  # its start moved with the clock


def test_refractory_period_suppresses_an_echo_but_not_a_later_word() -> None:
    det = EventDetector(on=0.8, off=0.5, refractory_s=1.0)
    scores = [0.9, 0.1, 0.9, 0.1] + [0.1] * 10 + [0.9, 0.1]
    events = _run(det, scores)
    assert [t for t, _ in events] == ["new", "end", "new", "end"]  # the echo at 0.2 s is dropped


def test_smoothing_needs_a_sustained_score() -> None:
    det = EventDetector(on=0.8, off=0.4, smoothing=3)
    assert _run(det, [0.1, 0.95, 0.1, 0.1, 0.95, 0.1]) == []
    assert [t for t, _ in _run(EventDetector(on=0.8, off=0.4, smoothing=3), [0.9, 0.9, 0.9, 0.1, 0.1, 0.1])] == [
        "new",
        "end",
    ]


def test_updates_announce_a_rising_peak_at_most_once_a_second() -> None:
    det = EventDetector(on=0.5, off=0.2)
    events = []
    for i, s in enumerate([0.55, 0.6, 0.7, 0.8, 0.9, 0.95, 0.1]):
        events += det.update({"x": s}, i * 0.6, i * 0.6)
    kinds = [e.type for e in events]
    assert kinds[0] == "new" and kinds[-1] == "end" and 1 <= kinds.count("update") <= 3
    assert events[-1].score == pytest.approx(0.95)


def test_reset_ends_active_events_and_labels_filter() -> None:
    det = EventDetector(on=0.5, off=0.2, labels=["word"])
    assert [e.type for e in det.update({"word": 0.9, "other": 0.9}, 0, 0)] == ["new"]
    ended = det.reset()
    assert [(e.type, e.label) for e in ended] == [("end", "word")]
    assert det.counts == {"new": 1, "update": 0, "end": 1}


def test_thresholds_are_checked() -> None:
    with pytest.raises(ValueError):
        EventDetector(on=0.4, off=0.6)
