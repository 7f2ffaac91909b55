"""The online service: the gRPC server and everything on its request path.

server.py (composition root: build, start, watch, stop), supervisor.py (one process or N on
one port), servicer.py (protobuf <-> domain types, the one error -> status table), wire.py
(the wire's columnar `Values` <-> typed columns), predictor.py (served models by reference,
hot reload), feature_lookup.py (GetOnlineFeatures), metrics.py (Prometheus). The request path:
servicer -> predictor -> ServedModel.predict (serving/inference). Never imports Feast, pandas
or pyarrow.
"""
