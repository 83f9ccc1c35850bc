import importlib
import pkgutil

import tessera.v1


def test_every_generated_module_imports_and_names_its_package() -> None:
    names = [m.name for m in pkgutil.iter_modules(tessera.v1.__path__)]
    assert {"common_pb2", "registry_pb2_grpc", "scheduler_pb2_grpc", "aggregator_pb2_grpc"} <= set(
        names
    )
    for name in names:
        module = importlib.import_module(f"tessera.v1.{name}")
        if name.endswith("_pb2"):
            assert module.DESCRIPTOR.package == "tessera.v1"


def test_every_service_lives_in_its_own_file() -> None:
    from tessera.v1 import aggregator_pb2, registry_pb2, scheduler_pb2

    services = {
        m.__name__: list(m.DESCRIPTOR.services_by_name)
        for m in (aggregator_pb2, registry_pb2, scheduler_pb2)
    }
    assert services == {
        "tessera.v1.aggregator_pb2": ["Aggregator"],
        "tessera.v1.registry_pb2": ["Registry"],
        "tessera.v1.scheduler_pb2": ["Scheduler"],
    }
