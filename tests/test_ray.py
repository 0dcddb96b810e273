"""Issue 10: bulk classification, embedding and tagging on Ray Data.

On a local Ray instance with 2 CPUs: a few hundred generated shape images (with corrupt
files among them), synthesized audio clips and captions run through `vlmedge.ray.run`
and `vlmedge predict|embed --engine ray`; every row equals the single-process pipeline's
result for that input on the same backend and precision, rows keep the input order, and
unreadable inputs land in the `error` column. Skipped where Ray Data is not installed
(pip install 'vlmedge[ray]').
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vlmedge.errors import ArtifactError, BackendUnavailableError, InputError, UsageError, VlmedgeError

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray Data is not installed (pip install 'vlmedge[ray]')")
ROOT = Path(__file__).resolve().parents[1]
BACKEND = dict(backend="onnxruntime", precision="fp32")
CORRUPT = {"broken.jpg": b"\xff\xd8\xff\xe0 this is not a jpeg", "empty.png": b"", "notes.png": b"plain text"}


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlmedge", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={**os.environ, "COLUMNS": "200", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})


# -- data and artifacts ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """240 shape images of varied size and format in nested folders, and 3 corrupt files."""
    from vlmedge.exporters.builtin import shapes

    folder = tmp_path_factory.mktemp("ray-images")
    rng = np.random.default_rng(10)
    for i in range(240):
        image, *_ = shapes.random_example(rng, image_size=int(rng.integers(24, 80)))
        sub = folder / ("nested/deeper" if i % 5 == 0 else "nested" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        if i % 7 == 0:
            image = image.convert("L")
        image.save(sub / f"shape-{i:03d}.{('jpg', 'png', 'webp')[i % 3]}")
    for name, data in CORRUPT.items():
        (folder / "nested" / name).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """24 synthesized clips (every 4th is four times longer, so it is cut into windows), one corrupt."""
    import soundfile as sf

    from vlmedge.exporters.builtin import sounds

    folder = tmp_path_factory.mktemp("ray-audio")
    rng = np.random.default_rng(11)
    for i in range(24):
        wave = sounds.synthesize(sounds.CLASSES[i % len(sounds.CLASSES)], rng)
        if i % 4 == 0:
            wave = np.concatenate([wave] * 4)
        rate = 16000 if i % 3 else 22050
        if rate != 16000:
            import soxr

            wave = soxr.resample(wave, 16000, rate).astype(np.float32)
        sf.write(folder / f"clip-{i:02d}.{'wav' if i % 2 else 'flac'}", wave, rate)
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (folder / "empty.wav").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import vlmedge

    made: dict[str, Path] = {}

    def make(kind: str) -> Path:
        if kind in made:
            return made[kind]
        root = tmp_path_factory.mktemp(f"ray-{kind}")
        if kind == "dinov2":
            from tests.test_image_embedding import tiny_encoder

            model, processor = tiny_encoder("dinov2")
            model.save_pretrained(root / "hf")
            processor.save_pretrained(root / "hf")
            source = root / "hf"
        elif kind == "clip":
            from tests.clip_models import tiny_clip_folder

            source = tiny_clip_folder("clip", root)
        elif kind == "ast":
            import transformers

            from tests.test_audio_tagging import CONFIGS, tiny_ast

            tiny_ast("single-softmax").save_pretrained(root / "hf")
            transformers.ASTFeatureExtractor(**CONFIGS["single-softmax"][1]).save_pretrained(root / "hf")
            source = root / "hf"
        else:
            raise ValueError(kind)
        vlmedge.export(str(source), root / "artifact")
        made[kind] = root / "artifact"
        return made[kind]

    return make


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance with 2 CPUs, shared by the tests of this module."""
    if not HAVE_RAY:
        pytest.skip("Ray Data is not installed (pip install 'vlmedge[ray]')")
    import ray

    for attempt in (1, 2):  # Ray gives a raylet 30 s to register; a very busy machine can miss that once
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def rows_of(dataset) -> list[dict]:
    import pyarrow as pa
    import ray

    return pa.concat_tables(ray.get(dataset.to_arrow_refs())).to_pylist()


def expected_order(*inputs, kind="image") -> list[str]:
    from vlmedge.bulk.inputs import collect

    found = collect(list(inputs), kind)
    return found.files + found.missing


def assert_ranked_equal(rows: list[dict], predictions) -> None:
    """labels, indices and scores of each row equal the pipeline's Predictions / Tags exactly."""
    assert len(rows) == len(predictions)
    for row, ranked in zip(rows, predictions):
        assert row["labels"] == [p.label for p in ranked]
        assert row["indices"] == [p.index for p in ranked]
        assert row["scores"] == [float(np.float32(p.score)) for p in ranked]  # stored as float32, exactly


# -- the module and the API --------------------------------------------------------------------


@needs_ray
def test_vlmedge_ray_imports_the_real_ray():
    import vlmedge.ray

    ray = vlmedge.ray.require_ray()
    assert ray.__name__ == "ray" and hasattr(ray, "init") and hasattr(ray, "data")
    assert Path(ray.__file__).resolve().parent != (ROOT / "vlmedge")
    assert sys.modules["ray"] is ray and sys.modules["vlmedge.ray"] is vlmedge.ray


def test_without_ray_the_engine_says_how_to_install(vit_artifact, tmp_path):
    """Ray hidden from the interpreter: vlmedge imports and runs; --engine ray is one clear error."""
    code = ("import sys; sys.modules['ray'] = None\n"
            "import vlmedge, vlmedge.cli, vlmedge.bulk\n"
            "import vlmedge.ray as vr\n"
            "try:\n    vr.require_ray()\nexcept vlmedge.VlmedgeError as e:\n    print('API:', e)\n"
            "vlmedge.cli.main(sys.argv[1:])\n")
    image = ROOT / "exporters" / "sample_data" / "red-circle.jpg"
    result = subprocess.run([sys.executable, "-c", code, "predict", str(vit_artifact), str(image), "--engine", "ray",
                             "--out", str(tmp_path / "o.parquet")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "pip install 'vlmedge[ray]'" in result.stdout
    assert "pip install 'vlmedge[ray]'" in " ".join(result.stderr.split())  # rich may wrap the line
    assert "Traceback" not in result.stderr and not (tmp_path / "o.parquet").exists()
    # Ray options without --engine ray are refused
    result = cli("predict", vit_artifact, image, "--address", "auto")
    assert result.returncode == 2 and "--engine ray" in result.stderr


@needs_ray
def test_classify_a_folder_equals_the_single_process_pipeline(ray_local, vit_artifact, images):
    import vlmedge
    import vlmedge.ray as vray

    # two actors of half a CPU each, so batches finish out of order and the order must be restored
    dataset = vray.run(vit_artifact, images, "classify", batch_size=16, concurrency=2, cpus_per_worker=0.5,
                       preprocess_cpus=0.5, top_k=3, **BACKEND)
    rows = rows_of(dataset)
    assert [r["path"] for r in rows] == expected_order(images)
    assert len(rows) == 243 and set(rows[0]) == {"path", "labels", "indices", "scores", "error"}
    failed = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert set(failed) == set(CORRUPT)
    assert "could not be decoded" in failed["broken.jpg"] and str(images) in failed["broken.jpg"]
    good = [r for r in rows if not r["error"]]
    assert all(r["labels"] is None and r["scores"] is None for r in rows if r["error"])
    classifier = vlmedge.load(vit_artifact, **BACKEND)
    assert_ranked_equal(good, classifier.classify([r["path"] for r in good], top_k=3))


@needs_ray
def test_embed_a_csv_of_paths_equals_the_pipeline(ray_local, exported, images, tmp_path, monkeypatch):
    import vlmedge
    import vlmedge.ray as vray

    artifact = exported("dinov2")
    files = sorted(images.rglob("shape-*.png"))[:40]
    listed = [os.path.relpath(p, tmp_path) for p in files[::-1]] + ["missing.png"]  # relative, reversed order
    (tmp_path / "paths.csv").write_text("path,id\n" + "".join(f"{p},{i}\n" for i, p in enumerate(listed)))
    monkeypatch.chdir(tmp_path)
    rows = rows_of(vray.run(artifact, "paths.csv", "embed", batch_size=8, pooling="cls", **BACKEND))
    assert [r["path"] for r in rows] == listed and [r["id"] for r in rows] == list(range(len(listed)))
    assert rows[-1]["embedding"] is None and "does not exist" in rows[-1]["error"]
    got = np.array([r["embedding"] for r in rows[:-1]], dtype=np.float32)
    expected = vlmedge.load(artifact, **BACKEND).embed([str(tmp_path / p) for p in listed[:-1]], pooling="cls")
    np.testing.assert_array_equal(got, expected)


@needs_ray
def test_clip_images_captions_and_zero_shot_equal_the_pipeline(ray_local, exported, images, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    import vlmedge
    import vlmedge.ray as vray

    artifact = exported("clip")
    clip = vlmedge.load(artifact, **BACKEND)

    captions = ["a red circle", "", "a photo of a dog", "word " * 400, None, "ünïcödé 猫 🐱"] * 20
    pq.write_table(pa.table({"id": list(range(len(captions))), "text": captions}), tmp_path / "captions.parquet")
    rows = rows_of(vray.run(artifact, tmp_path / "captions.parquet", "embed_texts", batch_size=7, **BACKEND))
    assert [r["id"] for r in rows] == list(range(len(captions)))
    assert [r["error"] is not None for r in rows] == [c is None for c in captions]
    good = [r for r in rows if not r["error"]]
    np.testing.assert_array_equal(np.array([r["embedding"] for r in good], np.float32),
                                  clip.embed_texts([r["text"] for r in good]))

    # zero-shot over a Dataset the caller built, with a 'path' column
    paths = [str(p) for p in sorted(images.glob("*.*"))[:30]]
    assert len(paths) == 30
    labels, templates = ["circle", "star", "square", "cross"], ["a photo of a {}.", "a drawing of a {}."]
    dataset = ray.data.from_items([{"path": p} for p in paths])
    rows = rows_of(vray.run(artifact, dataset, "classify", labels=labels, templates=templates, top_k=2, **BACKEND))
    assert [r["path"] for r in rows] == paths
    assert_ranked_equal(rows, clip.zero_shot(paths, labels, templates, top_k=2))


@needs_ray
def test_audio_tagging_equals_the_pipeline(ray_local, exported, clips):
    import vlmedge
    import vlmedge.ray as vray

    artifact = exported("ast")
    rows = rows_of(vray.run(artifact, clips, batch_size=5, top_k=3, window_hop=0.4, **BACKEND))  # default: "tag"
    assert [r["path"] for r in rows] == expected_order(clips, kind="audio")
    failed = [r for r in rows if r["error"]]
    assert [Path(r["path"]).name for r in failed] == ["broken.wav", "empty.wav"]
    from vlmedge.bulk.inputs import collect
    from vlmedge.bulk.job import make_job
    from vlmedge.bulk.local import run_local

    job = make_job(artifact, top_k=3, window_hop=0.4, **BACKEND)
    local = run_local(job, collect([r["path"] for r in failed], "audio"))
    assert [r["error"] for r in failed] == local.column("error").to_pylist()  # the same messages, not rewritten
    assert failed[1]["error"] == f"Audio file {clips / 'empty.wav'} is empty (0 bytes); pass a complete audio file."
    good = [r for r in rows if not r["error"]]
    tagger = vlmedge.load(artifact, **BACKEND)
    results = tagger.tag([r["path"] for r in good], top_k=3, window_hop=0.4)
    assert max(len(c.windows) for c in results) > 1  # long clips were cut into windows
    assert_ranked_equal(good, [c.tags for c in results])
    assert [r["duration"] for r in good] == [c.duration for c in results]


@needs_ray
def test_unreadable_files_get_the_local_engines_rows(ray_local, vit_artifact, images, tmp_path):
    """A FIFO, a dangling link, a file deleted after listing, a missing one (and, when not
    root, a file without read permission): the Ray engine's rows, error messages included,
    are the local engine's; nothing fails the job."""
    import shutil

    import vlmedge.ray as vray
    from vlmedge.bulk.inputs import collect
    from vlmedge.bulk.job import make_job
    from vlmedge.bulk.local import run_local

    folder = tmp_path / "photos"
    folder.mkdir()
    sources = sorted(images.glob("*.png"))[:4]
    for source in sources:
        shutil.copy(source, folder / source.name)
    shutil.copy(sources[0], folder / "vanishes.png")
    (folder / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (folder / "locked.png").write_bytes(b"")
    (folder / "locked.png").chmod(0)  # unreadable unless this runs as root
    (folder / os.fsdecode(b"bro\xfeken.png")).write_bytes(b"x")  # a name that is not UTF-8, in its message too
    os.mkfifo(tmp_path / "pipe.png")
    inputs = [str(folder), str(tmp_path / "pipe.png"), str(tmp_path / "missing.png")]
    job = make_job(vit_artifact, "classify", top_k=2, **BACKEND)
    found = collect(inputs, "image")
    dataset = vray.run(vit_artifact, inputs, "classify", batch_size=3, top_k=2, **BACKEND)  # listed, not yet read
    (folder / "vanishes.png").unlink()
    rows = rows_of(dataset)
    assert rows == run_local(job, found, batch_size=3).to_pylist()
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert set(errors) == {"dangling.png", "vanishes.png", "locked.png", "pipe.png", "missing.png", "bro\\xfeken.png"}
    assert errors["bro\\xfeken.png"].startswith(f"Image file {folder}/bro\\xfeken.png is not a readable")
    assert "is not a regular file" in errors["pipe.png"]
    assert errors["vanishes.png"] == f"Image file {folder / 'vanishes.png'} does not exist; check the path."
    assert errors["dangling.png"] == (f"{folder / 'dangling.png'} is a link to {tmp_path / 'nowhere.png'}, which "
                                      "does not exist; fix the link or pass the file.")
    assert "does not exist" in errors["missing.png"]
    if os.geteuid() != 0:
        assert "could not be opened (Permission denied)" in errors["locked.png"]


@needs_ray
def test_clip_image_embeddings_from_a_shipped_artifact(ray_local, exported, images):
    """ship_artifact: the actors load the copy that came through the object store."""
    import vlmedge
    import vlmedge.ray as vray

    artifact = exported("clip")
    folder = images / "nested" / "deeper"
    rows = rows_of(vray.run(artifact, folder, "embed", batch_size=8, ship_artifact=True, **BACKEND))  # = embed_images
    assert [r["path"] for r in rows] == expected_order(folder)
    np.testing.assert_array_equal(np.array([r["embedding"] for r in rows], np.float32),
                                  vlmedge.load(artifact, **BACKEND).embed_images([r["path"] for r in rows]))


@needs_ray
def test_mistakes_are_clear_errors_before_any_work(ray_local, vit_artifact, exported, images, tmp_path):
    import vlmedge.ray as vray

    with pytest.raises(UsageError, match="runs classify, not 'tag'"):
        vray.run(vit_artifact, images, "tag")
    with pytest.raises(InputError, match="non-empty list of candidate labels"):
        vray.run(exported("clip"), images, "classify")
    with pytest.raises(InputError, match="need 4.5 CPUs, but the Ray cluster has 2"):
        vray.run(vit_artifact, images, concurrency=4)
    (tmp_path / "t.csv").write_text("file\na.png\n")
    with pytest.raises(InputError, match="reads a 'bytes' or 'path' or 'image' column"):
        vray.run(vit_artifact, tmp_path / "t.csv")
    (tmp_path / "captions.txt").write_text("a red circle\n")  # was read as an image: "not a readable JPEG, PNG, ..."
    with pytest.raises(UsageError, match=r"captions.txt is a .txt file: captions, .* 'path' column instead"):
        vray.run(vit_artifact, [str(images), str(tmp_path / "captions.txt")])
    with pytest.raises(UsageError, match="Captions come from"):
        vray.run(exported("clip"), images, "embed_texts")
    with pytest.raises(VlmedgeError, match="No artifact folder"):
        vray.run(tmp_path / "nothing", images)
    with pytest.raises(UsageError, match=r"onnxruntime backend takes no session option 'performance_hint' \(an option"):
        vray.run(vit_artifact, images, session_options={"performance_hint": "throughput"}, **BACKEND)
    with pytest.raises(BackendUnavailableError, match="has no int8 onnx file for graph"):
        vray.run(vit_artifact, images, backend="onnxruntime", precision="int8")


def test_make_job_refuses_what_a_worker_could_not_load(artifact_copy):
    """A precision or model file the artifact lacks is one sentence from make_job, as from vlmedge.load."""
    import json

    from vlmedge.bulk.job import make_job

    with pytest.raises(UsageError, match="Unknown precision 'fp33'"):
        make_job(artifact_copy, precision="fp33")
    with pytest.raises(BackendUnavailableError, match="has no int8 onnx file for graph"):
        make_job(artifact_copy, backend="onnxruntime", precision="int8")
    model = next(e["path"] for e in json.loads((artifact_copy / "manifest.json").read_text())["files"]
                 if e.get("role") == "model" and e["path"].endswith(".onnx"))
    (artifact_copy / model).unlink()
    with pytest.raises(ArtifactError, match=f"is missing {model}"):
        make_job(artifact_copy, **BACKEND)


def test_local_engine_reads_a_csv_of_paths(vit_artifact, images, tmp_path, monkeypatch):
    """The single-process engine (no Ray; pyarrow only) over a CSV whose paths look like numbers."""
    pytest.importorskip("pyarrow")
    import shutil

    import vlmedge
    from vlmedge.bulk.inputs import collect
    from vlmedge.bulk.job import make_job
    from vlmedge.bulk.local import run_local

    for i, source in enumerate(sorted(images.glob("*.png"))[:5]):
        shutil.copy(source, tmp_path / f"{i}0")  # a file named "00", "10", ...: text, not a number
    (tmp_path / "t.csv").write_text("path,id\n" + "".join(f"{i}0,{i}\n" for i in range(6)) + ",6\n")
    monkeypatch.chdir(tmp_path)
    job = make_job(vit_artifact, "classify", top_k=2, **BACKEND)
    table = run_local(job, collect(["t.csv"], "image"), batch_size=4)
    rows = table.to_pylist()
    assert [r["path"] for r in rows] == [f"{i}0" for i in range(6)] + [""] and [r["id"] for r in rows] == list(range(7))
    assert "does not exist" in rows[5]["error"] and rows[5]["labels"] is None
    assert rows[6]["error"] == "The path cell of this row is empty; fill it in or drop the row."
    rows = rows[:6]
    for bad in (2.5, "4", True, 0):  # the one check of both engines, and of vlmedge.load
        with pytest.raises(UsageError, match="batch_size must be a positive integer"):
            run_local(job, collect(["t.csv"], "image"), batch_size=bad)
    expected = vlmedge.load(vit_artifact, **BACKEND).classify([str(tmp_path / f"{i}0") for i in range(5)], top_k=2)
    assert_ranked_equal(rows[:5], expected)


def test_tables_of_other_columns_keep_every_row_and_a_result_column_is_refused(vit_artifact, images, tmp_path,
                                                                                 monkeypatch):
    """Two tables with other columns lost rows silently (columns of different lengths); an
    input column the results write ('labels') was dropped; a CSV or .txt with a BOM misread."""
    pytest.importorskip("pyarrow")
    import shutil

    from vlmedge.bulk.inputs import collect, holds_captions, read_table
    from vlmedge.bulk.job import make_job
    from vlmedge.bulk.local import run_local

    for i, source in enumerate(sorted(images.glob("*.png"))[:5]):
        shutil.copy(source, tmp_path / f"{i}.png")
    (tmp_path / "a.csv").write_text("id,path\n1,0.png\n2,1.png\n")
    (tmp_path / "b.csv").write_text("path\n2.png\n3.png\n4.png\n")
    monkeypatch.chdir(tmp_path)
    job = make_job(vit_artifact, "classify", top_k=2, **BACKEND)
    for batch_size in (1, 2, 4):
        rows = run_local(job, collect(["a.csv", "b.csv"], "image"), batch_size=batch_size).to_pylist()
        assert [r["path"] for r in rows] == [f"{i}.png" for i in range(5)] and [r["id"] for r in rows] == [1, 2] + [None] * 3
        assert all(r["error"] is None for r in rows)
    (tmp_path / "truth.csv").write_text("path,labels\n0.png,cat\n")
    with pytest.raises(InputError, match="The input has a column 'labels', which the results of classify write"):
        run_local(job, collect(["truth.csv"], "image"), batch_size=2)
    (tmp_path / "caps.csv").write_bytes("\ufefftext,k\na red circle,1\n".encode())
    (tmp_path / "caps.txt").write_bytes("\ufeffa red circle\n".encode())
    assert holds_captions(["caps.csv"]) and read_table("caps.txt", "text") == {"text": ["a red circle"]}


def test_a_tables_own_columns_keep_their_types(vit_artifact, images, tmp_path, monkeypatch):
    """They were read as Python values and typed again per batch: a map or a uint64 above 2**63
    failed with a traceback, a decimal128(5, 2) came back decimal128(3, 2), float16 as double,
    a dictionary as string; a column typed differently in two tables failed (a traceback at
    some batch sizes). Now they pass through as read, and the second is refused by name."""
    pa = pytest.importorskip("pyarrow")
    import decimal
    import shutil

    import pyarrow.parquet as pq

    from vlmedge.bulk.inputs import collect
    from vlmedge.bulk.job import make_job
    from vlmedge.bulk.local import run_local

    for i, source in enumerate(sorted(images.glob("*.png"))[:3]):
        shutil.copy(source, tmp_path / f"{i}.png")
    own = {"price": pa.array([decimal.Decimal("1.50"), None, decimal.Decimal("123.25")], pa.decimal128(5, 2)),
           "big": pa.array([2 ** 63 + 5, 1, None], pa.uint64()),
           "tags": pa.array([[("a", 1)], [], None], pa.map_(pa.string(), pa.int64())),
           "half": pa.array(np.array([0.5, 1.5, 2.5], np.float16)),
           "kind": pa.array(["x", "y", "x"]).dictionary_encode()}
    pq.write_table(pa.table({"path": [f"{i}.png" for i in range(3)], **own}), tmp_path / "t.parquet")
    monkeypatch.chdir(tmp_path)
    job = make_job(vit_artifact, "classify", top_k=1, **BACKEND)
    for batch_size in (1, 2, 8):
        table = run_local(job, collect(["t.parquet"], "image"), batch_size=batch_size)
        for name, column in own.items():
            assert table.schema.field(name).type == column.type and table.column(name).to_pylist() == column.to_pylist()
        assert all(error is None for error in table.column("error").to_pylist())
    pq.write_table(pa.table({"path": ["0.png"], "price": ["cheap"]}), tmp_path / "u.parquet")
    for batch_size in (1, 8):
        with pytest.raises(InputError, match=rf"^Column 'price' is decimal128\(5, 2\) in {tmp_path}/t.parquet but "
                                             rf"string in {tmp_path}/u.parquet; give the column one type in every "
                                             r"table\.$"):
            run_local(job, collect(["t.parquet", "u.parquet"], "image"), batch_size=batch_size)


def test_a_folder_walk_says_what_it_leaves_out(tmp_path):
    """A FIFO named like an image got no row, as a named one does ("not a regular file"), and a
    link to a folder was not followed without a word."""
    import os

    from PIL import Image

    from vlmedge.bulk.inputs import collect

    folder, other = tmp_path / "in", tmp_path / "other"
    folder.mkdir(), other.mkdir()
    Image.new("RGB", (4, 4)).save(folder / "a.png")
    Image.new("RGB", (4, 4)).save(other / "b.png")
    os.mkfifo(folder / "f.png")
    os.symlink(other, folder / "linked")
    found = collect([str(folder)], "image")
    assert found.files == [str(folder / "a.png"), str(folder / "f.png")]
    assert found.passed_over_note("image") == (f"did not follow 1 link(s) to folders ({folder / 'linked'}); name a "
                                               "linked folder as an input to include it")


def test_a_folder_the_user_may_not_read_is_said_to_be_left_out(tmp_path):
    """A subfolder of the inputs the user may not list was left out without a word: the run
    answered 5 of 6 images as if the folder held 5; and the folder given, unreadable itself,
    was said to hold "No image files", as if it were empty."""
    import subprocess
    import sys

    from PIL import Image

    from tests.test_compiled_cache import without_permission_override

    folder = tmp_path / "in"
    (folder / "locked").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(folder / "a.png")
    Image.new("RGB", (4, 4)).save(folder / "locked" / "b.png")
    code = ("import json, sys\nfrom vlmedge.bulk.inputs import collect\nfrom vlmedge.errors import UsageError\ntry:\n"
            "    found = collect([sys.argv[1]], 'image')\nexcept UsageError as exc:\n    print(json.dumps(str(exc)))\n"
            "else:\n    print(json.dumps([found.files, found.passed_over_note('image')]))")

    def collected_with(locked):
        locked.chmod(0)
        try:
            done = subprocess.run([*without_permission_override(), sys.executable, "-c", code, str(folder)],
                                  capture_output=True, text=True, timeout=60)
        finally:
            locked.chmod(0o755)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert collected_with(folder / "locked") == [[str(folder / "a.png")], (
        f"could not read 1 folder(s) ({folder / 'locked'} (Permission denied)), whose files were left out; check "
        "their permissions")]
    assert collected_with(folder) == (f"No image files found in {folder} (could not read {folder} (Permission "
                                      "denied); check its permissions).")


def test_bad_tables_and_caption_files_are_one_sentence(tmp_path):
    """A corrupt Parquet, an empty CSV, captions that are not UTF-8: InputError naming the file."""
    from vlmedge.bulk.inputs import holds_captions, read_table
    from vlmedge.bulk.writers import NpyWriter

    (tmp_path / "bad.parquet").write_bytes(b"PAR1garbagePAR1")
    (tmp_path / "zero.csv").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    for name, fmt, says in (("bad.parquet", "parquet", "could not be read as a Parquet table"),
                            ("zero.csv", "csv", r"could not be read as a CSV table \(Empty CSV file\)"),
                            ("latin1.txt", "text", r"is not UTF-8 text \(invalid continuation byte at byte 3\)")):
        with pytest.raises(InputError, match=says):
            read_table(str(tmp_path / name), fmt)
    with pytest.raises(InputError, match="could not be read as a Parquet table"):
        holds_captions([str(tmp_path / "bad.parquet")])
    with pytest.raises(InputError, match=r"hold nothing to embed \(no files, rows or captions\)"):
        with NpyWriter(tmp_path / "e.npy", tmp_path):  # an empty captions file: no rows at all
            pass
    assert not list(tmp_path.glob("*.npy")) and not list(tmp_path.glob(".*"))


def test_an_out_that_cannot_be_written_is_refused_before_the_run(tmp_path, monkeypatch):
    """A folder, a path under a file, a read-only folder: one sentence before any input is read;
    a write that fails later (a full disk) is one sentence too and leaves nothing behind."""
    import errno

    from vlmedge.bulk.writers import NpyWriter, ParquetWriter

    (tmp_path / "d.parquet").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match=r"d.parquet is a folder; give the path of a file to write, e.g. .*d.parquet/results.parquet"):
        ParquetWriter(tmp_path / "d.parquet")
    with pytest.raises(UsageError, match=r"file/x.npy cannot be written: .*file is a file, not a folder"):
        NpyWriter(tmp_path / "file" / "x.npy", tmp_path)
    (tmp_path / "ro").mkdir(mode=0o555)
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path / "ro")  # root may write anyway
    with pytest.raises(UsageError, match=r"ro/r.parquet cannot be written \(no permission to create files in .*ro\)"):
        ParquetWriter(tmp_path / "ro" / "r.parquet")
    monkeypatch.undo()
    assert NpyWriter(tmp_path / "x.NPY", tmp_path).listing == tmp_path / "x.files.json"  # suffixes in any case

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    writer = ParquetWriter(tmp_path / "r.parquet")
    monkeypatch.setattr(os, "replace", full)
    from vlmedge.errors import OutputError

    with pytest.raises(OutputError, match=r"Could not write .*r.parquet \(No space left on device\)"):
        with writer:
            writer.add({"path": ["a"], "error": ["x"]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.parquet", "file", "ro"]


def test_cli_out_mistakes_are_usage_errors(vit_artifact, exported, images, tmp_path):
    """predict --out of a suffix bulk does not write is exit 2 naming .parquet (also with a
    folder input); an --out that is a folder is exit 2 before anything runs."""
    image = sorted(images.glob("*.png"))[0]
    for inputs in ([image], [images]):
        result = cli("predict", vit_artifact, *inputs, "--out", tmp_path / "r.csv")
        assert result.returncode == 2 and "writes its results to a .parquet file (not r.csv)" in result.stderr
    (tmp_path / "d.parquet").mkdir()
    result = cli("predict", vit_artifact, image, "--out", tmp_path / "d.parquet")
    assert result.returncode == 2 and "d.parquet is a folder" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.parquet"]
    # a table without --out, --json with --out, a label twice: usage errors before anything loads
    (tmp_path / "t.csv").write_text(f"path\n{image}\n")
    for args, words in ((["predict", vit_artifact, tmp_path / "t.csv"], "t.csv is a table; tables of inputs go with --out"),
                        (["predict", vit_artifact, image, "--out", tmp_path / "r.parquet", "--json"], "--json prints"),
                        (["predict", exported("clip"), image, "--labels", "a,a"], "given twice"),
                        (["embed", exported("clip"), image, "--pooling", "cls", "--out", tmp_path / "e.npy"],
                         "--pooling applies to image encoders")):
        result = cli(*args)
        assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_cli_column_names_the_tables_column_of_paths(vit_artifact, exported, images, tmp_path):
    """A table whose paths are in a column not named 'path' could not be run from the command
    line: its error said to "name one with column=...", an option of Python only. --column names
    it for predict and embed (a CLIP table's caption column then stays a passed-through column),
    and is refused without a table."""
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    import vlmedge

    paths = [str(p) for p in sorted(images.glob("*.png"))[:3]]
    (tmp_path / "t.csv").write_text("file,caption\n" + "".join(f"{p},shape {i}\n" for i, p in enumerate(paths)))
    result = cli("predict", vit_artifact, tmp_path / "t.csv", "--out", tmp_path / "r.parquet")
    assert result.returncode == 1 and "(or name one: --column on the command line, column= in Python)" in result.stderr

    result = cli("predict", vit_artifact, tmp_path / "t.csv", "--out", tmp_path / "r.parquet", "--column", "file",
                 "--top-k", "2")
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(tmp_path / "r.parquet").to_pylist()
    assert [r["file"] for r in rows] == paths and all(r["error"] is None for r in rows)
    assert_ranked_equal(rows, vlmedge.load(vit_artifact, **BACKEND).classify(paths, top_k=2))

    clip = exported("clip")  # without --column this table holds captions (a caption column, no path column)
    result = cli("embed", clip, tmp_path / "t.csv", "--out", tmp_path / "e.npy", "--column", "file",
                 "--backend", "onnxruntime")
    assert result.returncode == 0, result.stderr
    listing = json.loads((tmp_path / "e.files.json").read_text())
    assert listing["files"] == paths and listing["texts"] == []
    expected = vlmedge.load(clip, backend="onnxruntime").embed_images(paths)
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), expected, atol=1e-6)

    result = cli("embed", clip, paths[0], "--out", tmp_path / "x.npy", "--column", "file")
    assert result.returncode == 2 and result.stderr.strip() == (
        "Error: --column file names the column of file paths in a .parquet or .csv input table, and no table is "
        "given; pass the table, or drop --column."), result.stderr


def test_embed_out_mistakes_and_an_out_naming_an_input_are_usage_errors(exported, images, tmp_path):
    """embed --out x.csv wrote x.csv.npy, an existing folder folder.npy beside it, '-' a file
    named -.npy; an --out naming the input table replaced it; tables and files mixed, and
    tables of two formats, were exit 1. Now each is exit 2 before anything loads."""
    image = sorted(images.glob("*.png"))[0]
    (tmp_path / "t.csv").write_text(f"path\n{image}\n")
    (tmp_path / "t.parquet").write_bytes(b"")
    artifact = exported("dinov2")
    for args, words in ((["embed", artifact, image, "--out", tmp_path / "x.csv"], "writes a .npy (and its .files.json) "
                                                                                  "or a .parquet, not x.csv"),
                        (["embed", artifact, image, "--out", tmp_path], "is a folder; pass a file in it"),
                        (["embed", artifact, image, "--out", "-"], "not standard output"),
                        (["predict", artifact, tmp_path / "t.parquet", "--out", tmp_path / "t.parquet"],
                         "is one of the inputs"),
                        (["embed", artifact, tmp_path / "t.parquet", "--out", tmp_path / "t.parquet"],
                         "is one of the inputs"),
                        (["predict", artifact, tmp_path / "t.csv", image, "--out", tmp_path / "r.parquet"],
                         "not both"),
                        (["predict", artifact, tmp_path / "t.csv", tmp_path / "t.parquet", "--out", tmp_path / "r.parquet"],
                         "one format at a time")):
        result = cli(*args)
        assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.parquet"]
    assert (tmp_path / "t.csv").read_text() == f"path\n{image}\n"


@pytest.mark.parametrize("engine", [["--decode-workers", "1"], pytest.param(["--engine", "ray"], marks=needs_ray)],
                         ids=["local", "ray"])
def test_sigterm_mid_run_leaves_nothing_behind(exported, images, tmp_path, engine):
    """`timeout`, `kill` or a scheduler's SIGTERM ends a bulk run as Ctrl-C does: the
    temporary file is removed, and the process ends by SIGTERM (on Ray too: ray.init's own
    handler, which exits 15 after a stack dump, is not left in place)."""
    import signal
    import time

    pytest.importorskip("pyarrow")
    artifact = exported("dinov2")
    process = subprocess.Popen([sys.executable, "-m", "vlmedge", "embed", str(artifact), str(images), "--out",
                                str(tmp_path / "e.parquet"), "--batch-size", "1", *engine],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".e.parquet.tmp-*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()[1][-2000:]
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGTERM, stderr[-2000:]
    assert b"Traceback" not in stderr and b"SIGTERM received" not in stderr and list(tmp_path.iterdir()) == []
    assert b"Terminated: nothing was written" in stderr


# -- the CLI -----------------------------------------------------------------------------------


@needs_ray
def test_without_address_a_local_instance_with_every_cpu_starts(monkeypatch):
    import ray

    import vlmedge.ray as vray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    from vlmedge.bulk import ray as bulk_ray

    monkeypatch.setattr(bulk_ray, "_check_reachable", lambda address: None)  # no head to reach here
    vray.init()
    vray.init("ray://head:10001")
    assert calls == [{"address": "local", "num_cpus": os.cpu_count()}, {"address": "ray://head:10001"}]


@needs_ray
def test_cli_predict_engine_ray_equals_the_local_engine(ray_local, vit_artifact, images, tmp_path):
    import pyarrow.parquet as pq

    folder = images / "nested"
    address = ray_local.get_runtime_context().gcs_address
    result = cli("predict", vit_artifact, folder, "--engine", "ray", "--address", address,
                 "--out", tmp_path / "ray.parquet", "--batch-size", "8", "--top-k", "2", "--backend", "onnxruntime")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Ray ({address})" in result.stdout and "3 failed" in result.stdout
    assert "broken.jpg" in result.stderr
    local = cli("predict", vit_artifact, folder, "--out", tmp_path / "local.parquet", "--top-k", "2",
                "--backend", "onnxruntime")
    assert local.returncode == 0, local.stderr
    ray_table, local_table = pq.read_table(tmp_path / "ray.parquet"), pq.read_table(tmp_path / "local.parquet")
    assert ray_table.num_rows == len(expected_order(folder))
    assert ray_table.equals(local_table)  # same schema, rows, order, scores and error messages


@needs_ray
def test_cli_embed_engine_ray_writes_what_plain_embed_writes(ray_local, exported, images, tmp_path):
    """With --address the CLI joins a running cluster; .npy + .files.json as the plain command."""
    import json

    artifact = exported("dinov2")
    folder = images / "nested"
    address = ray_local.get_runtime_context().gcs_address
    result = cli("embed", artifact, folder, "--engine", "ray", "--address", address, "--out", tmp_path / "r.npy")
    assert result.returncode == 0, result.stderr[-3000:]
    plain = cli("embed", artifact, folder, "--out", tmp_path / "p.npy")
    assert plain.returncode == 0, plain.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "r.npy"), np.load(tmp_path / "p.npy"))
    rows = len(np.load(tmp_path / "r.npy"))  # the summary counts what the .npy holds, not the unreadable too
    assert f"({rows} rows, {len(CORRUPT)} failed, left out)" in result.stdout
    # a .npy has no error column: the message points at the side file, as plain embed's does
    assert "listed in r.files.json" in result.stderr and "'error' column" not in result.stderr
    ray_listing = json.loads((tmp_path / "r.files.json").read_text())
    plain_listing = json.loads((tmp_path / "p.files.json").read_text())
    assert ray_listing["files"] == [str(Path(f).resolve()) for f in plain_listing["files"]]
    assert sorted(Path(s["input"]).name for s in ray_listing["skipped"]) == sorted(CORRUPT)
    assert ray_listing["pooling"] == plain_listing["pooling"] and ray_listing["shape"] == plain_listing["shape"]


@needs_ray
def test_no_cluster_at_the_address_is_one_sentence(vit_artifact, tmp_path):
    """An address with no cluster ended in a 40-line ConnectionError traceback. (A closed port: "auto"
    finds any Ray this machine runs, another test's included; Ray's client gives up after ~30 s.)"""
    from tests.test_cli import vlmedge_cli

    sample = Path(__file__).resolve().parent.parent / "exporters" / "sample_data" / "red-circle.jpg"
    result = vlmedge_cli("predict", vit_artifact, str(sample), "--engine", "ray", "--address", "ray://127.0.0.1:1",
                         "--out", str(tmp_path / "x.parquet"), env={"RAY_ADDRESS": ""})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "Error: Cannot reach the Ray cluster at ray://127.0.0.1:1" in result.stderr and "ray start" in result.stderr


def test_a_column_empty_in_the_first_batches_takes_its_type_from_later_ones(tmp_path):
    """The first batch fixed the Parquet schema: a column all null there had no type, and the
    next batch with values failed the run with a pyarrow traceback."""
    pq = pytest.importorskip("pyarrow.parquet")
    from vlmedge.bulk.writers import ParquetWriter

    with ParquetWriter(tmp_path / "r.parquet") as writer:
        writer.add({"path": ["a", "b"], "note": [None, None], "error": [None, None]})
        writer.add({"path": ["c"], "note": ["x"], "error": [None]})
    table = pq.read_table(tmp_path / "r.parquet")
    assert table.column("note").to_pylist() == [None, None, "x"] and str(table.schema.field("note").type) == "string"
    with ParquetWriter(tmp_path / "s.parquet") as writer:  # empty to the end: written as it is
        writer.add({"path": ["a"], "note": [None], "error": [None]})
    assert pq.read_table(tmp_path / "s.parquet").column("note").to_pylist() == [None]


def test_top_k_left_out_is_the_python_calls_default_on_every_surface(exported, vit_artifact, image_files):
    """Zero-shot ranks every candidate label in Python and when served; bulk jobs and the CLI
    kept 5 of 6 (their own TOP_K), and neither could ask for every label of a classifier. Left
    out, top_k is now the Python method's own default everywhere; None (--top-k all) is every label."""
    from tests.test_cli import vlmedge_cli
    from vlmedge.artifact import Artifact
    from vlmedge.bulk.job import make_job
    from vlmedge.errors import UsageError

    labels = ["red", "green", "blue", "yellow", "purple", "orange"]
    assert make_job(exported("clip"), "zero_shot", labels=labels).options["top_k"] is None
    assert make_job(exported("clip"), "zero_shot", labels=labels, top_k=2).options["top_k"] == 2
    assert make_job(vit_artifact, "classify").options["top_k"] == 5
    assert make_job(vit_artifact, "classify", top_k=None).options["top_k"] is None
    with pytest.raises(UsageError, match=r"top_k must be a positive integer \(or None for all labels\), not 0"):
        make_job(vit_artifact, "classify", top_k=0)
    zero_shot = vlmedge_cli("predict", exported("clip"), image_files[0], "--labels", ",".join(labels), "--json")
    assert zero_shot.returncode == 0 and len(json.loads(zero_shot.stdout)[0]["predictions"]) == 6, zero_shot.stderr
    every = vlmedge_cli("predict", vit_artifact, image_files[0], "--top-k", "all", "--json")
    assert len(json.loads(every.stdout)[0]["predictions"]) == len(Artifact.open(vit_artifact).manifest["labels"]) > 5
    default = vlmedge_cli("predict", vit_artifact, image_files[0], "--json")
    assert len(json.loads(default.stdout)[0]["predictions"]) == 5
    refused = vlmedge_cli("predict", vit_artifact, image_files[0], "--top-k", "0")
    assert refused.returncode == 2 and "--top-k takes a positive number of labels or all, not '0'" in refused.stderr
