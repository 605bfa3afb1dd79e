"""The typed deployment config: one field per settable JSON field, and the stored JSON goes
through it unchanged."""

from __future__ import annotations

import json
from dataclasses import fields

from wakegate.spec import (
    ConfigUpdate,
    DeploymentConfig,
    DeploymentSpec,
    merge_config,
    parse_create,
    parse_update,
    set_fields,
)

FULL = {
    "baseModel": "qwen3-8b",
    "customArgs": ["--max-num-seqs", "32"],
    "cooldownTime": 600,
    "hfToken": "hf_x",
    "minReplicas": 1,
    "maxReplicas": 3,
    "scaleUpRequestThreshold": 2,
    "maxTotalTokens": 4096,
    "requestLoggingEnabled": True,
    "directIngress": False,
    "preloadedAdapters": ["org/a", "org/b"],
    "speculator": "auto",
    "prefixCaching": True,
    "backend": "v2",
    "disableAdapters": False,
    "usesGuaranteedCapacity": True,
    "chunkedPrefill": False,
    "maxNumBatchedTokens": 8192,
    "cacheModel": True,
    "mergeAdapter": False,
    "computeSpec": {"requests": {"inference": {"sku": "a10_24gb_100"}}},
    "quantization": "fp8",
    "accelerator": "a10_24gb_100",
    "loraxImageTag": "0.12",
    "speculationDisableByBatchSize": 8,
    "scalingPolicy": {"name": "knative", "params": {"stable_window_s": 30}},
    "maxQueueLength": 50,
    "routing": "least-loaded",
}


def test_the_typed_config_has_every_field_the_api_takes() -> None:
    assert [f.name for f in fields(DeploymentConfig)] == list(ConfigUpdate.model_fields)


def test_stored_json_round_trips_unchanged() -> None:
    req = parse_create({"name": "d", "config": FULL})
    stored = set_fields(req.config)
    assert set(stored) == set(ConfigUpdate.model_fields)  # every field is exercised
    config = DeploymentConfig.from_update(req.config)
    assert json.dumps(config.to_dict()) == json.dumps(stored)
    assert DeploymentConfig.from_dict(json.loads(json.dumps(stored))) == config
    assert config.preloaded_adapters == ("org/a", "org/b")
    assert config.compute_spec is not None and config.compute_spec.sku == "a10_24gb_100"
    assert config.scaling_policy is not None and config.scaling_policy.params == {
        "stable_window_s": 30.0
    }


def test_a_record_round_trips_and_unset_fields_stay_unset() -> None:
    config = DeploymentConfig.from_dict({"base_model": "sim-llm", "min_replicas": 0})
    spec = DeploymentSpec("acme", "d", "u", None, config, "ready", 1, 0.0, 0.0)
    record = json.loads(json.dumps(spec.to_record()))
    assert record["config"] == {"base_model": "sim-llm", "min_replicas": 0}
    assert DeploymentSpec.from_record(record) == spec
    assert (spec.min_replicas, spec.max_replicas, spec.config.max_replicas) == (0, 1, None)


def test_an_update_replaces_only_the_fields_it_sets() -> None:
    stored = DeploymentConfig(base_model="sim-llm", max_replicas=4, routing="random")
    update = parse_update({"config": {"maxReplicas": 2, "routing": None}}).config
    merged = merge_config(stored, update or ConfigUpdate())
    assert merged == DeploymentConfig(base_model="sim-llm", max_replicas=2, routing="random")
    assert merged.changed_fields(stored) == {"max_replicas"}
