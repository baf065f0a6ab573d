"""Receiving in time: RTP timestamps to capture times (TrackTimeline), frames out of packets."""

from __future__ import annotations

import pytest
from aiortc.rtp import RtpPacket

from egresskit.rooms.encoded import _VideoFrames
from egresskit.rooms.timeline import SenderClock, TrackTimeline, ntp_seconds, rtp_delta

NTP_BASE = 3_900_000_000.0  # a 2023 NTP time, in seconds


def ntp(seconds: float) -> int:
    """Seconds as a 64-bit NTP timestamp."""
    return round(seconds * (1 << 32))


def test_rtp_delta_counts_across_the_wrap():
    assert rtp_delta(5, (1 << 32) - 5) == 10
    assert rtp_delta((1 << 32) - 5, 5) == -10
    assert ntp_seconds(ntp(NTP_BASE + 0.25)) == pytest.approx(NTP_BASE + 0.25, abs=1e-6)


def test_without_reports_the_earliest_arrival_and_the_rtp_clock_time_a_track():
    timeline = TrackTimeline(90_000)
    timeline.arrived(1000, arrival=100.050)  # the first packet came late
    assert timeline.time_of(1000 + 90_000) == pytest.approx(101.050)
    timeline.arrived(1000 + 9000, arrival=100.105)  # 0.1 s on, sooner after capture
    assert timeline.time_of(1000) == pytest.approx(100.005)
    timeline.arrived(1000 + 18_000, arrival=100.400)  # a late one changes nothing
    assert timeline.time_of(1000) == pytest.approx(100.005)
    assert not timeline.reported


def test_tracks_of_one_sender_meet_at_its_capture_times_whatever_their_delays():
    sender = SenderClock()
    audio, video = TrackTimeline(48_000, sender), TrackTimeline(90_000, sender)
    # the sender's NTP clock runs 1000 s behind ours; reports take 2 ms to arrive
    audio.sender_report(500, ntp(NTP_BASE), arrival=NTP_BASE + 1000.002)
    video.sender_report(7_000_000, ntp(NTP_BASE + 0.5), arrival=NTP_BASE + 1000.502)
    # video packets wait 80 ms more than audio ones on the way: no matter
    audio.arrived(500 + 48_000, arrival=NTP_BASE + 1001.030)
    video.arrived(7_000_000 + 45_000, arrival=NTP_BASE + 1001.110)
    assert audio.reported and video.reported
    same_instant = NTP_BASE + 1000.002 + 2.0
    assert audio.time_of(500 + 96_000) == pytest.approx(same_instant, abs=1e-6)
    assert video.time_of(7_000_000 + 135_000) == pytest.approx(same_instant, abs=1e-6)


def test_a_report_stamped_late_is_corrected_by_packets_that_arrived_sooner():
    timeline = TrackTimeline(48_000)
    # the report says timestamp 0 was at NTP_BASE, but it was sent 30 ms after capture
    timeline.sender_report(0, ntp(NTP_BASE + 0.030), arrival=NTP_BASE + 0.031)
    assert timeline.time_of(0) == pytest.approx(NTP_BASE + 0.031, abs=1e-6)
    timeline.arrived(960, arrival=NTP_BASE + 0.021)  # sent at once, 1 ms on the way
    assert timeline.time_of(0) == pytest.approx(NTP_BASE + 0.001, abs=1e-6)


def test_jitter_moves_the_tracks_of_a_sender_together_never_apart():
    sender = SenderClock()
    audio, video = TrackTimeline(48_000, sender), TrackTimeline(90_000, sender)
    # capture-stamped reports (as libwebrtc's); the sender's clock is ours minus 1000 s
    audio.sender_report(0, ntp(NTP_BASE), arrival=NTP_BASE + 1000.090)
    video.sender_report(0, ntp(NTP_BASE), arrival=NTP_BASE + 1000.090)
    # every packet meets 20-100 ms of jitter, a different least for each track
    for k, (audio_delay, video_delay) in enumerate([(0.09, 0.05), (0.02, 0.08), (0.06, 0.07)]):
        audio.arrived(k * 960, arrival=NTP_BASE + 1000 + k * 0.02 + audio_delay)
        video.arrived(k * 1800, arrival=NTP_BASE + 1000 + k * 0.02 + video_delay)
        # each frame goes where its sender captured it, wherever the mapping stands
        assert audio.time_of(48_000) - video.time_of(90_000) == pytest.approx(0, abs=1e-6)
    # the mapping is the tightest any packet of either track allows: 20 ms late
    assert audio.time_of(0) - NTP_BASE == pytest.approx(1000.020, abs=1e-6)
    assert video.time_of(0) - NTP_BASE == pytest.approx(1000.020, abs=1e-6)


def test_the_clock_mapping_ignores_small_moves_and_takes_large_ones():
    sender = SenderClock()
    audio = TrackTimeline(48_000, sender)
    audio.sender_report(0, ntp(NTP_BASE), arrival=NTP_BASE + 1000.050)
    assert audio.time_of(0) - NTP_BASE == pytest.approx(1000.050, abs=1e-6)
    audio.arrived(960, arrival=NTP_BASE + 1000.060)  # 10 ms tighter: a jolt for nothing
    assert audio.time_of(0) - NTP_BASE == pytest.approx(1000.050, abs=1e-6)
    audio.arrived(1920, arrival=NTP_BASE + 1000.070)  # 20 ms tighter: taken
    assert audio.time_of(0) - NTP_BASE == pytest.approx(1000.030, abs=1e-6)


def test_timestamps_keep_counting_across_the_32_bit_wrap():
    timeline = TrackTimeline(90_000)
    start = (1 << 32) - 45_000
    timeline.arrived(start, arrival=10.0)
    assert timeline.time_of((start + 90_000) % (1 << 32)) == pytest.approx(11.0)
    # far beyond a quarter of the range the reference moves on, and times stay continuous
    step = 1 << 29
    times = [timeline.time_of((start + k * step) % (1 << 32)) for k in range(1, 9)]
    assert times == pytest.approx([10.0 + k * step / 90_000 for k in range(1, 9)])


def rtp(seq: int, timestamp: int, marker: bool = False) -> RtpPacket:
    packet = RtpPacket(sequence_number=seq % 65536, timestamp=timestamp, marker=int(marker))
    packet._data = bytes([seq % 256])
    return packet


def test_video_frames_leave_complete_in_order_and_skip_a_lost_packet(monkeypatch):
    frames = _VideoFrames()
    assert frames.add(rtp(65534, 0)) == (False, None)
    pli, frame = frames.add(rtp(65535, 0, marker=True))  # complete at its marker
    assert not pli and (frame.timestamp, frame.data) == (0, bytes([254, 255]))
    assert frames.add(rtp(1, 3000, marker=True)) == (False, None)  # 0 is missing
    pli, frame = frames.add(rtp(0, 3000))  # the retransmission completes it
    assert (pli, frame.data) == (False, bytes([0, 1]))
    assert frames.add(rtp(0, 3000)) == (False, None)  # a late duplicate
    # packet 2 is lost for good: frames 3000*2 (3) and 3000*3 (4-5) wait behind it
    assert frames.add(rtp(3, 6000, marker=True)) == (False, None)
    assert frames.add(rtp(4, 9000)) == (False, None)
    monkeypatch.setattr("egresskit.rooms.encoded.MAX_PACKET_WAIT_S", 0.0)
    pli, frame = frames.add(rtp(5, 9000, marker=True))
    # the hole and the frame after it (it may have lost its start) go; a key frame is asked for
    assert pli and (frame.timestamp, frame.data) == (9000, bytes([4, 5]))


def test_a_packet_lost_inside_a_frame_is_waited_for_as_long_as_one_at_its_start(monkeypatch):
    frames = _VideoFrames()
    assert frames.add(rtp(10, 0)) == (False, None)
    assert not frames.waiting  # the frame is still arriving
    # 11 is lost for good; 12 ends the frame, 13 is the next one
    assert frames.add(rtp(12, 0, marker=True)) == (False, None)
    assert frames.waiting
    assert frames.add(rtp(13, 3000, marker=True)) == (False, None)
    monkeypatch.setattr("egresskit.rooms.encoded.MAX_PACKET_WAIT_S", 0.0)
    pli, frame = frames.add(rtp(14, 6000, marker=True))
    # the frame with the hole goes (not 512 packets later); a key frame is asked for
    assert pli and frame.timestamp == 3000 and not frames.waiting
    assert frames.take().timestamp == 6000


def test_frames_held_behind_a_hole_all_leave_when_it_is_filled():
    frames = _VideoFrames()
    assert frames.add(rtp(10, 0, marker=True))[1].timestamp == 0
    # 11 is lost: the next three frames, one packet each, wait behind it
    for seq in (12, 13, 14):
        assert frames.add(rtp(seq, 3000 * (seq - 10), marker=True)) == (False, None)
    pli, frame = frames.add(rtp(11, 3000, marker=True))  # its retransmission
    assert not pli and frame.timestamp == 3000
    # one frame per packet added would leave 90 ms of frames waiting for good
    assert [frames.take().timestamp for _ in range(3)] == [6000, 9000, 12000]
    assert frames.take() is None
