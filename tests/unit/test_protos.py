"""The committed generated code is what the .proto generates, and the contract holds."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from serving.pb.carrara.v1 import prediction_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]


def load_regenerate():
    spec = importlib.util.spec_from_file_location("regenerate", ROOT / "protos" / "regenerate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["regenerate"] = module
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    written = load_regenerate().generate(tmp_path)
    committed = ROOT / "serving" / "pb"
    assert written
    for path in written:
        relative = path.relative_to(tmp_path)
        assert (committed / relative).read_text() == path.read_text(), (
            f"serving/pb/{relative} is stale: run `python protos/regenerate.py`"
        )


def test_contract_field_numbers_are_as_designed() -> None:
    predict = pb.PredictRequest.DESCRIPTOR.fields_by_name
    assert {n: f.number for n, f in predict.items()} == {
        "model": 1,
        "entities": 2,
        "request_data": 3,
        "return_features": 4,
    }
    response = pb.PredictResponse.DESCRIPTOR.fields_by_name
    assert {n: f.number for n, f in response.items()} == {
        "model": 1,
        "model_version": 2,
        "predictions": 3,
        "missing_features": 4,
        "feature_names": 5,
        "features": 6,
        "degraded": 7,  # added: scored without the online store
    }
    info = pb.ModelInfo.DESCRIPTOR.fields_by_name
    assert {n: f.number for n, f in info.items()} == {
        "name": 1,
        "versions": 2,
        "aliases": 3,
        "feature_service": 4,
        "entities": 5,
        "request_data": 6,
    }
    values = pb.Values.DESCRIPTOR.fields_by_name
    assert {n: f.number for n, f in values.items()} == {
        "int64_values": 1,
        "double_values": 2,
        "string_values": 3,
        "bool_values": 4,
        "bytes_values": 5,  # added: Bytes features
        "nested_values": 6,  # added: lists, sets, maps, structs, json
    }
    request = pb.GetOnlineFeaturesRequest.DESCRIPTOR.fields_by_name
    assert {n: f.number for n, f in request.items()} == {
        "feature_service": 1,
        "features": 2,
        "entities": 3,
        "request_data": 4,  # fixed by the design: inputs of on-demand views
    }
    column = pb.FeatureColumn.DESCRIPTOR.fields_by_name
    assert column["feast_type"].number == 6
    assert {n: f.number for n, f in pb.Value.DESCRIPTOR.fields_by_name.items()} == {
        "int64_value": 1,
        "double_value": 2,
        "string_value": 3,
        "bool_value": 4,
        "bytes_value": 5,
        "list_value": 6,
        "map_value": 7,
    }
    assert pb.DESCRIPTOR.package == "carrara.v1"
    assert [m.name for m in pb.DESCRIPTOR.services_by_name["PredictionService"].methods] == [
        "Predict",
        "GetOnlineFeatures",
        "ListModels",
        "Push",  # added, as the design fixes it
    ]
    push = pb.PushRequest.DESCRIPTOR.fields_by_name
    assert {n: f.number for n, f in push.items()} == {"push_source": 1, "columns": 2, "to": 3}
    pushed = pb.PushResponse.DESCRIPTOR.fields_by_name
    assert {n: f.number for n, f in pushed.items()} == {
        "rows_written": 1,
        "rows_older_than_stored": 2,
    }
    assert {v.name: v.number for v in pb.PushTarget.DESCRIPTOR.values} == {
        "PUSH_TARGET_UNSPECIFIED": 0,
        "ONLINE": 1,
        "OFFLINE": 2,
        "ONLINE_AND_OFFLINE": 3,
    }
