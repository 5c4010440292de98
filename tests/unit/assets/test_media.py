"""Unit tests for apps.assets.media: content sniffing and validation of uploads (no Django, no database)."""

from __future__ import annotations

import os
import random
import struct
import time
import warnings
from pathlib import Path

import pytest
from PIL import Image

from apps.assets.media import (
    EMPTY_MESSAGE,
    HEIF_MESSAGE,
    MATROSKA_MESSAGE,
    MAX_MOOV_BYTES,
    NO_MOOV_MESSAGE,
    NO_VIDEO_TRACK_MESSAGE,
    UNSUPPORTED_MESSAGE,
    MediaInfo,
    MediaRejected,
    inspect_media,
)
from tests.support import media_samples as samples

MAX_SIDE = 4096


@pytest.fixture
def write(tmp_path: Path):
    """Write bytes to a file (under a misleading name when asked) and return its path."""

    def _write(data: bytes, name: str = "upload.bin") -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return _write


def inspect_bytes(write, data: bytes, name: str = "upload.bin", max_image_side: int = MAX_SIDE) -> MediaInfo:
    return inspect_media(write(data, name), max_image_side=max_image_side)


def rejection(write, data: bytes, name: str = "upload.bin", max_image_side: int = MAX_SIDE) -> str:
    with pytest.raises(MediaRejected) as excinfo:
        inspect_bytes(write, data, name, max_image_side)
    return str(excinfo.value)


# --- accepted images ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "mime_type", "extension"),
    [
        (samples.png_bytes, "image/png", ".png"),
        (samples.jpeg_bytes, "image/jpeg", ".jpg"),
        (samples.webp_bytes, "image/webp", ".webp"),
    ],
)
def test_accepted_images_are_identified_with_their_size(write, build, mime_type, extension):
    assert inspect_bytes(write, build(64, 48)) == MediaInfo("IMAGE", mime_type, extension, 64, 48)


def test_multi_picture_jpeg_from_a_camera_is_accepted_as_jpeg(write):
    assert inspect_bytes(write, samples.mpo_bytes(64, 48)) == MediaInfo("IMAGE", "image/jpeg", ".jpg", 64, 48)


def test_animated_png_is_accepted_as_png(write):
    assert inspect_bytes(write, samples.animated_png_bytes(32, 24)) == MediaInfo("IMAGE", "image/png", ".png", 32, 24)


def test_image_type_comes_from_content_not_from_file_name(write):
    info = inspect_bytes(write, samples.png_bytes(10, 20), name="holiday.jpg")
    assert (info.mime_type, info.extension) == ("image/png", ".png")


def test_image_exactly_at_the_side_limit_is_accepted(write):
    assert inspect_bytes(write, samples.png_bytes(32, 8), max_image_side=32).width == 32


def test_media_info_is_immutable():
    info = MediaInfo("IMAGE", "image/png", ".png", 1, 1)
    with pytest.raises(AttributeError):
        info.width = 2  # type: ignore[misc]


# --- accepted videos ------------------------------------------------------------------------------


def test_mp4_is_identified_with_the_video_track_size(write):
    assert inspect_bytes(write, samples.mp4_bytes(320, 240)) == MediaInfo("VIDEO", "video/mp4", ".mp4", 320, 240)


def test_mp4_with_moov_after_mdat_is_accepted(write):
    assert inspect_bytes(write, samples.mp4_bytes(1920, 1080, faststart=False)).height == 1080


def test_mp4_with_version_1_track_header_is_read(write):
    info = inspect_bytes(write, samples.mp4_bytes(1280, 720, tkhd_version=1))
    assert (info.width, info.height) == (1280, 720)


def test_mp4_without_track_header_size_falls_back_to_the_sample_entry(write):
    info = inspect_bytes(write, samples.mp4_bytes(848, 480, tkhd_size=(0, 0)))
    assert (info.width, info.height) == (848, 480)


def test_mp4_with_64_bit_box_sizes_is_accepted(write):
    data = (
        samples.box(b"ftyp", b"mp42", bytes(4), b"mp42")
        + samples.large_box(b"moov", samples.video_trak(100, 50))
        + samples.large_box(b"mdat", bytes(32))
    )
    assert inspect_bytes(write, data) == MediaInfo("VIDEO", "video/mp4", ".mp4", 100, 50)


def test_mp4_whose_last_box_has_size_zero_extends_to_end_of_file(write):
    mdat_to_eof = struct.pack(">I", 0) + b"mdat" + bytes(100)
    data = samples.box(b"ftyp", b"isom", bytes(4)) + samples.box(b"moov", samples.video_trak(16, 16)) + mdat_to_eof
    assert inspect_bytes(write, data).mime_type == "video/mp4"


def test_mov_is_identified_as_quicktime(write):
    assert inspect_bytes(write, samples.mov_bytes(640, 360)) == MediaInfo("VIDEO", "video/quicktime", ".mov", 640, 360)


def test_old_quicktime_file_without_ftyp_is_identified_as_mov(write):
    info = inspect_bytes(write, samples.mov_bytes(720, 480, with_ftyp=False))
    assert (info.mime_type, info.extension, info.width, info.height) == ("video/quicktime", ".mov", 720, 480)


def test_webm_is_identified_with_the_video_track_size(write):
    assert inspect_bytes(write, samples.webm_bytes(640, 360)) == MediaInfo("VIDEO", "video/webm", ".webm", 640, 360)


def test_live_recorded_webm_with_unknown_sizes_is_accepted(write):
    info = inspect_bytes(write, samples.webm_bytes(1280, 720, unknown_sizes=True))
    assert (info.mime_type, info.width, info.height) == ("video/webm", 1280, 720)


def test_video_type_comes_from_content_not_from_file_name(write):
    assert inspect_bytes(write, samples.webm_bytes(), name="clip.mp4").extension == ".webm"


# --- empty, unknown and unsupported formats -------------------------------------------------------


def test_empty_file_is_rejected(write):
    assert rejection(write, b"") == EMPTY_MESSAGE


def test_text_file_renamed_to_png_is_rejected_as_unsupported(write):
    assert rejection(write, b"just some notes\n" * 20, name="photo.png") == UNSUPPORTED_MESSAGE


def test_random_bytes_are_rejected_as_unsupported(write):
    data = random.Random(1234).randbytes(4096)
    assert rejection(write, data, name="video.mp4") == UNSUPPORTED_MESSAGE


def test_a_single_byte_is_rejected_as_unsupported(write):
    assert rejection(write, b"\x00") == UNSUPPORTED_MESSAGE


def test_gif_is_rejected_naming_gif(write):
    assert (
        rejection(write, samples.gif_bytes(), name="anim.png")
        == "GIF images are not supported; upload PNG, JPEG or WEBP."
    )


def test_bmp_is_rejected_naming_bmp(write):
    assert rejection(write, samples.bmp_bytes()).startswith("BMP images are not supported")


def test_heic_is_rejected_as_heif(write):
    assert rejection(write, samples.heic_bytes(), name="IMG_0001.jpg") == HEIF_MESSAGE


def test_mkv_is_rejected_as_matroska(write):
    assert rejection(write, samples.mkv_bytes(), name="movie.webm") == MATROSKA_MESSAGE


def test_ebml_file_with_another_doc_type_is_rejected_as_unsupported(write):
    assert rejection(write, samples.webm_bytes(doc_type="foo")) == UNSUPPORTED_MESSAGE


# --- corrupt and truncated images -----------------------------------------------------------------


def test_truncated_png_is_rejected_as_corrupt(write):
    data = samples.png_bytes(64, 48)
    assert rejection(write, data[: len(data) // 2]).startswith("The image is truncated or corrupt")


def test_png_missing_only_its_end_chunk_is_rejected_as_corrupt(write):
    data = samples.png_bytes(64, 48)
    assert rejection(write, data[:-12]).startswith("The image is truncated or corrupt")


def test_truncated_jpeg_is_rejected_as_corrupt(write):
    data = samples.jpeg_bytes(64, 48)
    assert rejection(write, data[: len(data) // 2]).startswith("The image is truncated or corrupt")


def test_truncated_webp_is_rejected_as_corrupt(write):
    data = samples.webp_bytes(64, 48)
    assert rejection(write, data[: len(data) // 2]).startswith("The image is truncated or corrupt")


def test_png_with_broken_crc_is_rejected_as_corrupt(write):
    data = bytearray(samples.png_bytes(64, 48))
    idat = data.index(b"IDAT")
    (length,) = struct.unpack(">I", data[idat - 4 : idat])
    data[idat + 4 + length] ^= 0xFF  # first byte of the IDAT CRC
    assert rejection(write, bytes(data)).startswith("The image is truncated or corrupt")


def test_png_with_a_broken_header_is_rejected_as_corrupt_not_unsupported(write):
    data = bytearray(samples.png_bytes(64, 48))
    data[16:24] = bytes(8)  # zero width and height inside IHDR; its CRC no longer matches either
    assert rejection(write, bytes(data)).startswith("The image is truncated or corrupt")


def test_truncation_rejection_does_not_change_pillows_global_setting(write):
    from PIL import ImageFile

    before = ImageFile.LOAD_TRUNCATED_IMAGES
    data = samples.jpeg_bytes(64, 48)
    rejection(write, data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is before


# --- oversized images and decompression bombs -----------------------------------------------------


def test_image_over_the_largest_side_is_rejected_with_its_size(write):
    assert (
        rejection(write, samples.png_bytes(5000, 3), max_image_side=4096)
        == "The image is 5000×3 pixels; the largest side allowed is 4096."
    )


def test_tall_image_over_the_largest_side_is_rejected(write):
    assert rejection(write, samples.jpeg_bytes(8, 40), max_image_side=32).startswith("The image is 8×40 pixels")


def test_png_bomb_is_rejected_quickly_without_decoding(write):
    path = write(samples.png_bomb_bytes(30000, 30000), "bomb.png")
    started = time.perf_counter()
    with pytest.raises(MediaRejected) as excinfo:
        inspect_media(path, max_image_side=MAX_SIDE)
    assert time.perf_counter() - started < 1.0
    assert str(excinfo.value) == "The image is 30000×30000 pixels; the largest side allowed is 4096."


@pytest.mark.parametrize(
    "data",
    [samples.jpeg_declaring_size(30000, 30000), samples.webp_declaring_size(16383, 16383)],
    ids=["jpeg", "webp"],
)
def test_jpeg_and_webp_declaring_huge_sizes_are_rejected_with_their_size(write, data):
    assert rejection(write, data).endswith("pixels; the largest side allowed is 4096.")


def test_webp_declaring_a_long_side_under_pillows_limit_is_rejected_by_side(write):
    assert (
        rejection(write, samples.webp_declaring_size(5000, 300))
        == "The image is 5000×300 pixels; the largest side allowed is 4096."
    )


def test_png_bomb_under_pillows_limit_is_rejected_by_side_before_decoding(write):
    path = write(samples.png_bomb_bytes(9000, 9000), "bomb.png")
    started = time.perf_counter()
    with pytest.raises(MediaRejected) as excinfo:
        inspect_media(path, max_image_side=MAX_SIDE)
    assert time.perf_counter() - started < 1.0
    assert str(excinfo.value) == "The image is 9000×9000 pixels; the largest side allowed is 4096."


def test_decompression_bomb_warning_is_turned_into_rejection(write):
    # 10000×10000 is over Pillow's MAX_IMAGE_PIXELS (so Pillow warns) but under twice that (no error).
    path = write(samples.png_bomb_bytes(10000, 10000), "bomb.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(MediaRejected, match=r"10000×10000 pixels; at most [\d,]+ pixels are allowed"):
            inspect_media(path, max_image_side=20000)


def test_image_over_pillows_pixel_limit_is_rejected_even_when_warnings_are_ignored(write):
    path = write(samples.png_bomb_bytes(10000, 10000), "bomb.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(MediaRejected, match=r"10000×10000 pixels; at most [\d,]+ pixels are allowed"):
            inspect_media(path, max_image_side=20000)


# --- rejected ISO BMFF (MP4 / MOV) ----------------------------------------------------------------


def test_audio_only_mp4_is_rejected_for_having_no_video_track(write):
    assert rejection(write, samples.m4a_bytes(), name="song.mp4") == NO_VIDEO_TRACK_MESSAGE


def test_mp4_without_moov_is_rejected_as_incomplete(write):
    assert rejection(write, samples.mp4_without_moov_bytes()) == NO_MOOV_MESSAGE


def test_mp4_cut_in_the_middle_of_mdat_is_rejected_as_truncated(write):
    data = samples.mp4_bytes(faststart=True)
    message = rejection(write, data[: len(data) - 100])
    assert message == "The video is truncated or corrupt: the 'mdat' box runs past the end of the file."


def test_mp4_cut_in_the_middle_of_moov_is_rejected_as_truncated(write):
    data = samples.mp4_bytes(faststart=False)
    message = rejection(write, data[: len(data) - 100])
    assert message == "The video is truncated or corrupt: the 'moov' box runs past the end of the file."


def test_mp4_cut_inside_a_box_header_is_rejected_as_truncated(write):
    data = samples.mp4_bytes(faststart=True)
    mdat = data.index(b"mdat") - 4
    assert rejection(write, data[: mdat + 5]).startswith("The video is truncated or corrupt")


def test_mp4_with_a_child_box_overrunning_moov_is_rejected_as_corrupt(write):
    trak = bytearray(samples.video_trak(64, 64))
    trak[0:4] = struct.pack(">I", len(trak) + 50)  # claims to be longer than the moov around it
    data = samples.box(b"ftyp", b"isom", bytes(4)) + samples.box(b"moov", bytes(trak))
    assert rejection(write, data) == (
        "The video is truncated or corrupt: the 'trak' box does not fit inside its parent."
    )


def test_mp4_with_an_oversized_moov_is_rejected_without_reading_it(write, tmp_path):
    path = tmp_path / "huge.mp4"
    with path.open("wb") as fh:
        fh.write(samples.box(b"ftyp", b"isom", bytes(4)))
        fh.write(struct.pack(">I", 8 + MAX_MOOV_BYTES + 1) + b"moov")
        fh.truncate(fh.tell() + MAX_MOOV_BYTES + 1)  # sparse: no real disk use
    with pytest.raises(MediaRejected, match="moov box is larger than 64 MiB"):
        inspect_media(path, max_image_side=MAX_SIDE)


def test_file_starting_with_an_unknown_box_is_rejected_as_unsupported(write):
    assert rejection(write, samples.box(b"junk", bytes(32))) == UNSUPPORTED_MESSAGE


# --- rejected WebM --------------------------------------------------------------------------------


def test_truncated_webm_is_rejected_as_truncated(write):
    data = samples.webm_bytes()
    assert (
        rejection(write, data[:-10]) == "The video is truncated or corrupt: the Segment runs past the end of the file."
    )


def test_webm_cut_inside_its_ebml_header_is_rejected_as_truncated(write):
    assert rejection(write, samples.webm_bytes()[:20]).startswith("The video is truncated or corrupt")


def test_live_webm_with_a_cut_off_cluster_is_rejected_as_truncated(write):
    data = samples.webm_bytes(unknown_sizes=False)
    segment = data.index(b"\x18\x53\x80\x67")
    unknown_segment = data[:segment] + b"\x18\x53\x80\x67" + samples.UNKNOWN_SIZE + data[segment + 5 :]
    assert rejection(write, unknown_segment[:-10]).startswith("The video is truncated or corrupt")


def test_audio_only_webm_is_rejected_for_having_no_video_track(write):
    assert rejection(write, samples.webm_bytes(audio_only=True)) == NO_VIDEO_TRACK_MESSAGE


def test_webm_reaching_a_cluster_before_any_tracks_is_rejected_for_having_no_video_track(write):
    assert rejection(write, samples.webm_bytes(with_tracks=False)) == NO_VIDEO_TRACK_MESSAGE


# --- robustness -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        samples.png_bytes,
        samples.jpeg_bytes,
        samples.webp_bytes,
        samples.mp4_bytes,
        samples.mov_bytes,
        samples.webm_bytes,
    ],
)
def test_every_prefix_and_single_byte_corruption_is_accepted_or_rejected_cleanly(write, build):
    """No input may escape as anything but MediaInfo or MediaRejected (e.g. IndexError, struct.error)."""
    data = build()
    rng = random.Random(len(data))
    variants = [data[:cut] for cut in range(0, len(data), max(1, len(data) // 97))]
    for _ in range(150):
        mutated = bytearray(data)
        mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        variants.append(bytes(mutated))
    for variant in variants:
        try:
            inspect_bytes(write, variant)
        except MediaRejected as exc:
            assert str(exc).endswith("."), str(exc)


def test_missing_file_is_an_error_for_the_caller_not_a_rejection(tmp_path):
    with pytest.raises(FileNotFoundError):
        inspect_media(tmp_path / "nope.png", max_image_side=MAX_SIDE)


@pytest.mark.parametrize("bad", [0, -1, True, 10.5])
def test_max_image_side_must_be_a_positive_int(write, bad):
    with pytest.raises(ValueError):
        inspect_media(write(samples.png_bytes()), max_image_side=bad)


def test_path_like_and_string_paths_are_both_accepted(write):
    path = write(samples.png_bytes(3, 2))
    assert inspect_media(os.fspath(path), max_image_side=MAX_SIDE) == inspect_media(path, max_image_side=MAX_SIDE)
