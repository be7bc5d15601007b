import json

import pytest

from celeba_common.errors import UserError
from trainer import cluster

pytestmark = pytest.mark.slow  # processes and training runs: `make test` runs them, `make check` does not

SPEC = {
    "cluster": {"workerpool0": ["chief:2222"], "workerpool1": ["w0:2222", "w1:2222"]},
    "task": {"type": "workerpool1", "index": 1},
}


def test_cluster_spec_becomes_tf_config():
    config = cluster.cluster_spec_to_tf_config(SPEC)
    assert config == {
        "cluster": {"chief": ["chief:2222"], "worker": ["w0:2222", "w1:2222"]},
        "task": {"type": "worker", "index": 1},
    }
    assert cluster.num_tasks(config) == 3 and not cluster.is_chief(config)
    chief = cluster.cluster_spec_to_tf_config({**SPEC, "task": {"type": "workerpool0", "index": 0}})
    assert cluster.is_chief(chief)


def test_tf_config_preferred_and_exported():
    env = {"CLUSTER_SPEC": json.dumps(SPEC)}
    config = cluster.ensure_tf_config(env)
    assert json.loads(env["TF_CONFIG"]) == config
    tf_config = {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}
    assert cluster.tf_config({"TF_CONFIG": json.dumps(tf_config), "CLUSTER_SPEC": json.dumps(SPEC)}) == tf_config
    assert cluster.is_chief(tf_config)  # no chief task: worker 0 writes
    assert cluster.tf_config({}) is None and cluster.is_chief(None)


def test_bad_cluster_spec():
    with pytest.raises(UserError, match="CLUSTER_SPEC"):
        cluster.tf_config({"CLUSTER_SPEC": "{not json"})
    with pytest.raises(UserError, match="CLUSTER_SPEC"):
        cluster.tf_config({"CLUSTER_SPEC": json.dumps({"cluster": {"poolX": ["a"]}, "task": {}})})


def test_vertex_output_dirs():
    env = {
        "AIP_MODEL_DIR": "gs://b/model",
        "AIP_CHECKPOINT_DIR": "gs://b/ckpt",
        "AIP_TENSORBOARD_LOG_DIR": "gs://b/logs",
    }
    assert cluster.vertex_defaults(env) == {
        "model_dir": "gs://b/model",
        "checkpoint_dir": "gs://b/ckpt",
        "tensorboard_dir": "gs://b/logs",
    }


def test_tf_config_of_the_wrong_shape_is_one_line():
    cases = [
        ("[1, 2]", "JSON object"),
        ('"worker"', "JSON object"),
        ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "index 2"),
        ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "chief", "index": 0}}', "'task'"),
        ('{"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}', "lists of host:port"),
    ]
    for raw, needle in cases:
        with pytest.raises(UserError, match=needle):
            cluster.tf_config({"TF_CONFIG": raw})
