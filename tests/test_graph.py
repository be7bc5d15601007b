"""The records job's Beam transforms one by one, on beam.Create input with assert_that (Beam's own testing
utilities), beside the end-to-end runs of test_build_records.py."""

import json
import os

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline  # not a pytest class
from apache_beam.testing.util import assert_that, equal_to, is_not_empty

from dataset_format import schema, tfrecord
from dataset_format.transform import Transform
from preprocessing import celeba, graph, splits

OPTIONS = ["--runner=DirectRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]


def _located(group, position, name, label=0, length=10):
    return graph.Located(group, position, chunk_id=0, offset=position * length, length=length, label=label, name=name)


def test_plan_shards_keeps_the_best_ranked_readable_images_and_cuts_contiguous_shards():
    groups = [
        {"split": "train", "label": None, "target": 3, "num_candidates": 4},
        {"split": "test", "label": None, "target": 1, "num_candidates": 2},
    ]
    located = [_located(0, p, f"t{p}.jpg") for p in (3, 0, 2, 1)] + [_located(1, 1, "x1.jpg")]
    selection, plans = graph.plan_shards(located, groups, seed=7, num_shards=2)
    train = sorted(["t0.jpg", "t1.jpg", "t2.jpg"], key=lambda n: splits.rank_key(n, 7))  # rank 3 is the spare
    assert selection == {
        "shortfalls": [],
        "splits": {"train": {"names": train, "labels": [0, 0, 0]}, "test": {"names": ["x1.jpg"], "labels": [0]}},
    }
    assert [(p.split, p.shard, p.num_shards, [r.name for r in p.records]) for p in plans] == [
        ("train", 0, 2, train[:1]),
        ("train", 1, 2, train[1:]),
        ("test", 0, 1, ["x1.jpg"]),
    ]
    short, none = graph.plan_shards(located[:2], groups, seed=7, num_shards=2)
    assert none == [] and short["shortfalls"][0] == {
        "split": "train",
        "label": None,
        "wanted": 3,
        "readable": 2,
        "candidates": 4,
    }


def test_transform_chunks_writes_records_and_leaves_out_what_it_cannot_read(celeba_txt, tmp_path):
    names = sorted(os.listdir(os.path.join(celeba_txt, "img_align_celeba")))[:2]
    attributes = "01" * 20
    candidates = tmp_path / "candidates.json"
    candidates.write_text(
        json.dumps([[[0, 0, names[0], attributes], [0, 1, "missing.jpg", attributes], [0, 2, names[1], attributes]]])
    )
    source = celeba.ImageSource(os.path.join(celeba_txt, "img_align_celeba"))
    transform = Transform(32)
    with BeamTestPipeline(argv=OPTIONS) as p:
        out = p | beam.Create([0]) | beam.ParDo(graph.TransformChunk(source, str(candidates), str(tmp_path), transform))
        assert_that(
            out | "Names" >> beam.Map(lambda item: (type(item).__name__, item.name)),
            equal_to([("Located", names[0]), ("DeadLetter", "missing.jpg"), ("Located", names[1])]),
        )
    chunk = (tmp_path / "chunk-000000").read_bytes()
    raw = open(os.path.join(celeba_txt, "img_align_celeba", names[0]), "rb").read()
    bits = [int(c) for c in attributes]
    first = schema.encode_example(transform.apply(raw), 32, 32, names[0], bits[graph._LABEL_INDEX], bits)
    assert chunk.startswith(first) and len(chunk) > len(first)


def test_build_records_composite_returns_its_results_as_pcollections(celeba_txt, tmp_path):
    layout = celeba.find_layout(celeba_txt)
    groups = splits.select_candidates(celeba.read_rows(layout), {"train": 20, "validation": 5, "test": 5}, seed=1)
    chunks = graph.chunk_candidates(groups)
    candidates = tmp_path / "candidates.json"
    candidates.write_text(json.dumps(chunks))
    info = [
        {"split": g.split, "label": g.label, "target": g.target, "num_candidates": len(g.candidates)} for g in groups
    ]
    (tmp_path / "chunks").mkdir()
    source = celeba.ImageSource.for_layout(layout)
    with BeamTestPipeline(argv=OPTIONS) as p:
        results = (
            p
            | beam.Create(list(range(len(chunks))))
            | graph.BuildRecords(
                source,
                str(candidates),
                str(tmp_path / "chunks"),
                str(tmp_path),
                Transform(32),
                info,
                seed=1,
                num_shards=2,
                name="celeba",
            )
        )
        assert_that(results["dead_letters"], equal_to([]), label="NoDeadLetters")
        assert_that(
            results["selection"] | beam.Map(lambda s: sorted((k, len(v["names"])) for k, v in s["splits"].items())),
            equal_to([[("test", 5), ("train", 20), ("validation", 5)]]),
            label="Selection",
        )
        assert_that(
            results["shards"] | beam.Map(lambda s: (s["split"], s["index"], s["num_records"])),
            equal_to(
                [
                    ("train", 0, 10),
                    ("train", 1, 10),
                    ("validation", 0, 2),
                    ("validation", 1, 3),
                    ("test", 0, 2),
                    ("test", 1, 3),
                ]
            ),
            label="Shards",
        )
        assert_that(results["shards"], is_not_empty(), label="SomeShards")
    shard = tmp_path / schema.shard_name("celeba", "train", 0, 2)
    assert tfrecord.count_records(str(shard)) == 10
