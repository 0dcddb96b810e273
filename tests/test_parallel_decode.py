"""Issue 19 item 3: decoding and preprocessing in worker threads (vlmedge.preprocess.parallel)
give exactly what the serial loop gives: the same arrays bit for bit, in input order, and the
same error for a bad input, in the pipelines' list calls, `vlmedge embed FOLDER` and bulk."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from vlmedge.environment import available_cores
from vlmedge.errors import InputError, UsageError
from vlmedge.preprocess.parallel import DEFAULT_WORKERS, check_workers, prepare_ordered

BACKEND = {"backend": "onnxruntime"}
WORKERS = 4


# -- the helper --------------------------------------------------------------------------------


def test_results_keep_the_input_order_when_later_items_finish_first():
    def slow_first(i):
        time.sleep(0.02 * (i % 4 == 0))
        return i * i

    assert list(prepare_ordered(slow_first, range(30), workers=4, ahead=8)) == [i * i for i in range(30)]


def test_an_error_is_raised_at_its_items_turn_and_the_window_stays_bounded():
    in_flight, most, lock = [0], [0], threading.Lock()
    seen = []

    def work(i):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.002)
        with lock:
            in_flight[0] -= 1
        if i in (5, 7):
            raise ValueError(f"bad {i}")
        return i

    results = prepare_ordered(work, iter(range(100)), workers=3, ahead=6)
    with pytest.raises(ValueError, match="bad 5"):
        for value in results:
            seen.append(value)
    assert seen == [0, 1, 2, 3, 4] and most[0] <= 3


@pytest.mark.parametrize("workers", [1, 3])
def test_a_warning_given_while_preparing_names_the_callers_line(workers):
    """On a decode thread the first frame outside vlmedge was the thread pool's
    (concurrent/futures/thread.py), so a list call's warning named no line of the caller's,
    and Python's default filter showed it once for every list call of the process."""
    import functools

    from vlmedge.preprocess.audio import load_audio

    loud, fine, empty = np.full(1600, 20000, np.float32), np.full(1600, 0.5, np.float32), np.zeros(0, np.float32)
    prepared = prepare_ordered(functools.partial(load_audio, sample_rate=16000), [fine, loud, fine, empty],
                               workers=workers)
    with pytest.warns(UserWarning, match="samples reach 20000") as seen, pytest.raises(InputError, match="empty"):
        list(prepared)
    assert len(seen) == 1 and seen[0].filename == __file__


def test_one_worker_runs_in_the_callers_thread_lazily():
    threads, calls = set(), []

    def work(i):
        threads.add(threading.get_ident())
        calls.append(i)
        return i

    results = prepare_ordered(work, range(5), workers=1)
    assert calls == [] and next(results) == 0 and calls == [0]
    assert list(results) == [1, 2, 3, 4] and threads == {threading.get_ident()}


def test_the_worker_count_is_checked():
    assert check_workers(None) == DEFAULT_WORKERS == min(4, available_cores())
    assert check_workers(3) == 3
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(UsageError, match="decode_workers must be a positive integer"):
            check_workers(bad)


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A folder of JPEG and PNG images of very different decode cost (one large), a corrupt
    file among them, and a subfolder, sorted as `vlmedge embed` walks it."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    sizes = [(1600, 1200), (32, 24), (640, 480), (9, 300), (480, 640), (64, 64)]
    for i in range(40):
        width, height = sizes[i % len(sizes)]
        coarse = rng.integers(0, 256, size=(max(height // 16, 2), max(width // 16, 2), 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
        target = folder / ("sub" if i % 7 == 0 else "") / f"img{i:02d}.{'png' if i % 5 == 0 else 'jpg'}"
        target.parent.mkdir(exist_ok=True)
        image.save(target, quality=90)
    (folder / "img13b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def good_images(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*.*") if p.name != "img13b.jpg")


@pytest.fixture(scope="module")
def encoder_artifact(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import vlmedge
    from tests.test_image_embedding import tiny_encoder

    model, processor = tiny_encoder("dinov2")
    source = tmp_path_factory.mktemp("enc-dinov2")
    model.save_pretrained(source)
    processor.save_pretrained(source)
    out = tmp_path_factory.mktemp("art-dinov2") / "artifact"
    vlmedge.export(str(source), out)
    return out


@pytest.fixture(scope="module")
def ast_artifact(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import vlmedge
    from tests.test_audio_tagging import CONFIGS, tiny_ast

    source = tmp_path_factory.mktemp("hf-ast")
    tiny_ast("single-softmax").save_pretrained(source)
    transformers.ASTFeatureExtractor(**CONFIGS["single-softmax"][1]).save_pretrained(source)
    out = tmp_path_factory.mktemp("art-ast") / "artifact"
    vlmedge.export(str(source), out)
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[str]:
    """Clips of very different length, rate and format: a long one first."""
    from tests.test_audio_tagging import tone_clip

    folder = tmp_path_factory.mktemp("clips")
    made = []
    for i, (seconds, rate, suffix) in enumerate([(4.0, 44100, "flac"), (0.3, 16000, "wav"), (1.5, 22050, "wav"),
                                                 (0.8, 8000, "ogg"), (2.5, 16000, "wav")] * 3):
        path = folder / f"clip{i:02d}.{suffix}"
        sf.write(path, tone_clip(seconds, sr=rate, seed=i), rate)
        made.append(str(path))
    return made


def load(artifact, workers):
    import vlmedge

    return vlmedge.load(artifact, decode_workers=workers, **BACKEND)


def same_error(call):
    """(type, message) of the error call(workers) raises, serially and with threads (object
    addresses in soundfile's messages blanked)."""
    errors = []
    for workers in (1, WORKERS):
        with pytest.raises(Exception) as caught:
            call(workers)
        errors.append((type(caught.value), re.sub(r"0x[0-9a-f]+", "0x?", str(caught.value))))
    assert errors[0] == errors[1]
    return errors[0]


# -- the pipelines' list calls -----------------------------------------------------------------


def test_classify_list_equals_the_serial_loop_bit_for_bit(vit_artifact, photos, image_files):
    with Image.open(image_files[0]) as opened:
        pil = opened.copy()
    items = good_images(photos) + [pil, pil, np.full((20, 30, 3), 7, np.uint8), image_files[1].read_bytes()]
    serial, threaded = load(vit_artifact, 1), load(vit_artifact, WORKERS)
    assert len(items) > 32  # two model batches
    np.testing.assert_array_equal(serial.logits(items), threaded.logits(items))
    assert serial.classify(items, top_k=3) == threaded.classify(items, top_k=3)
    # each row is that image's own result, wherever it sits in the list
    np.testing.assert_array_equal(threaded.logits(items[::-1])[::-1], serial.logits(items))


def test_a_bad_image_fails_the_list_call_as_it_does_serially(vit_artifact, photos):
    good = good_images(photos)
    bad = str(photos / "img13b.jpg")
    kind, message = same_error(lambda w: load(vit_artifact, w).classify(good[:20] + [bad] + good[20:]))
    assert kind is InputError and bad in message
    # of two bad inputs the first in the list is reported, though the second decodes faster
    kind, message = same_error(lambda w: load(vit_artifact, w).logits(good[:3] + [str(photos / "gone.jpg"), bad]))
    assert "gone.jpg" in message and "does not exist" in message


def test_embed_list_equals_the_serial_loop(encoder_artifact, photos):
    items = good_images(photos)
    for pooling in ("cls", "cls+mean"):
        np.testing.assert_array_equal(load(encoder_artifact, 1).embed(items, pooling=pooling),
                                      load(encoder_artifact, WORKERS).embed(items, pooling=pooling))


def test_the_decode_workers_option_is_checked(vit_artifact):
    with pytest.raises(UsageError, match="decode_workers must be a positive integer"):
        load(vit_artifact, 0)


def test_batch_size_bounds_every_model_call(vit_artifact, encoder_artifact, ast_artifact, photos, clips):
    """vlmedge.load(batch_size=N): no model call holds more than N inputs (a small device's
    memory), the answers are the default's; it is checked like the other options."""
    import vlmedge
    from tests.hardening_support import model_calls

    items = good_images(photos)[:7]
    for artifact, method in ((vit_artifact, "classify"), (encoder_artifact, "embed")):
        default, small = vlmedge.load(artifact, **BACKEND), vlmedge.load(artifact, batch_size=3, **BACKEND)
        assert default.batch_size == 32 and small.batch_size == 3
        calls = model_calls(small)
        ours, theirs = getattr(small, method)(items), getattr(default, method)(items)
        if method == "classify":
            assert [[p.label for p in row] for row in ours] == [[p.label for p in row] for row in theirs]
        else:
            np.testing.assert_allclose(ours, theirs, atol=1e-5)
        assert calls == [3, 3, 1]
        getattr(small, f"{method}_prepared")(np.zeros((5, 3, *default.spec.output_size), np.float32))
        assert calls[3:] == [3, 2]  # the prepared path (bulk, serve) too
    tagger = vlmedge.load(ast_artifact, batch_size=2, **BACKEND)
    calls = model_calls(tagger)
    windows = sum(len(clip.windows) for clip in tagger.tag(clips))
    assert calls and max(calls) == 2 and sum(calls) == windows
    for bad in (0, 2.5, True, "8", 2 ** 62):
        with pytest.raises(UsageError, match=r"batch_size must be a positive integer up to 1,048,576 \(the most"):
            vlmedge.load(vit_artifact, batch_size=bad)
        with pytest.raises(UsageError, match="batch_size must be a positive integer"):
            tagger.batch_size = bad  # set on a loaded pipeline, checked as vlmedge.load checks it
    # an empty batch of the prepared path (a bulk batch whose every row failed to decode) is an empty answer
    classifier = vlmedge.load(vit_artifact, **BACKEND)
    assert classifier.classify_prepared(np.zeros((0, 3, *classifier.spec.output_size), np.float32)) == []
    encoder = vlmedge.load(encoder_artifact, **BACKEND)
    assert encoder.embed_prepared(np.zeros((0, 3, *encoder.spec.output_size), np.float32)).shape[0] == 0


# -- `vlmedge embed FOLDER` and bulk -----------------------------------------------------------


def embed_folder(artifact, folder, out, workers, batch_size=8):
    """What `vlmedge embed ARTIFACT FOLDER --out x.npy --decode-workers N` runs, in this process."""
    from rich.console import Console

    from vlmedge.bulk import command

    quiet = Console(quiet=True)
    command.embed(Path(artifact), [str(folder)], out, "local", None, batch_size, None, 0, "onnxruntime", None, None,
                  True, [], quiet, quiet, decode_workers=workers)
    return np.load(out), out.with_name(out.stem + ".files.json").read_text()


def test_embed_folder_equals_the_serial_run_and_skips_the_bad_file_alike(encoder_artifact, photos, tmp_path):
    serial, listing = embed_folder(encoder_artifact, photos, tmp_path / "serial.npy", 1)
    threaded, threaded_listing = embed_folder(encoder_artifact, photos, tmp_path / "threaded.npy", WORKERS)
    np.testing.assert_array_equal(serial, threaded)
    assert listing.replace("serial", "threaded") == threaded_listing
    assert "img13b.jpg" in listing and len(serial) == len(good_images(photos))
    np.testing.assert_array_equal(serial, load(encoder_artifact, 1).embed(good_images(photos)))


def test_the_cli_takes_decode_workers(encoder_artifact, photos, tmp_path):
    from typer.testing import CliRunner

    from vlmedge.cli import app

    out = tmp_path / "cli.npy"
    result = CliRunner().invoke(app, ["embed", str(encoder_artifact), str(photos), "--out", str(out),
                                      "--decode-workers", "2", "--batch-size", "5", "--threads", "1"])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(out), load(encoder_artifact, 1).embed(good_images(photos)))
    refused = CliRunner().invoke(app, ["embed", str(encoder_artifact), str(photos), "--out", str(out),
                                       "--decode-workers", "0"])
    assert refused.exit_code == 2


def test_bulk_classify_rows_equal_the_serial_engine(vit_artifact, photos):
    pytest.importorskip("pyarrow")
    from vlmedge.bulk.inputs import collect
    from vlmedge.bulk.job import make_job
    from vlmedge.bulk.local import run_local

    job = make_job(vit_artifact, "classify", top_k=3, **BACKEND)
    found = collect([str(photos), str(photos / "missing.jpg")], "image")
    tables = [run_local(job, found, batch_size=7, workers=workers).to_pylist() for workers in (1, WORKERS)]
    assert tables[0] == tables[1]
    errors = {Path(row["path"]).name: row["error"] for row in tables[0] if row["error"]}
    assert set(errors) == {"img13b.jpg", "missing.jpg"}


# -- audio -------------------------------------------------------------------------------------


def test_audio_list_calls_equal_the_serial_loop(ast_artifact, clips):
    from tests.test_audio_tagging import tone_clip

    items = clips + [tone_clip(1.2, sr=16000, seed=99)]
    serial, threaded = load(ast_artifact, 1), load(ast_artifact, WORKERS)
    for (spans, scores), (spans2, scores2) in zip(serial.window_probabilities(items, sample_rate=16000),
                                                  threaded.window_probabilities(items, sample_rate=16000)):
        np.testing.assert_array_equal(spans, spans2)
        np.testing.assert_array_equal(scores, scores2)
    assert serial.tag(items, sample_rate=16000) == threaded.tag(items, sample_rate=16000)


def test_a_bad_clip_fails_the_list_call_as_it_does_serially(ast_artifact, clips, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEfmt nothing")
    kind, message = same_error(lambda w: load(ast_artifact, w).tag(clips[:4] + [str(bad)] + clips[4:]))
    assert kind is InputError and "bad.wav" in message
    kind, message = same_error(lambda w: load(ast_artifact, w).tag(clips[:2] + [b"not audio", str(bad)]))
    assert message.startswith("Audio clip 2 of the list:")


def test_bulk_tag_rows_equal_the_serial_engine(ast_artifact, clips, tmp_path):
    pytest.importorskip("pyarrow")
    from vlmedge.bulk.inputs import collect
    from vlmedge.bulk.job import make_job
    from vlmedge.bulk.local import run_local

    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"fLaC but not")
    job = make_job(ast_artifact, "tag", top_k=3, **BACKEND)
    found = collect(clips[:7] + [str(bad)] + clips[7:], "audio")
    tables = [run_local(job, found, batch_size=4, workers=workers).to_pylist() for workers in (1, WORKERS)]
    assert tables[0] == tables[1]
    assert [row["path"] for row in tables[0] if row["error"]] == [str(bad)]
