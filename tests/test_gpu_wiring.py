"""``device`` is the server's, ``client.device`` the clients', resolved where the clients run: a driver
without CUDA can run clients on GPU workers, and a Ray cluster that counts GPUs schedules clients on
shares of one (this machine has none: Ray only counts the head's ``--num-gpus``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fedshield.client.work import train_step
from fedshield.config import CONFIG_DIR, ConfigError, build_experiment
from fedshield.config.digest import config_digest
from fedshield.engines.flower.simulation import FlowerEngine
from fedshield.engines.flower.transport import ClientUserError
from fedshield.models.params import get_flat_params
from fedshield.run import run
from fedshield.task.devices import ClientDeviceError, resolve_client_device
from fedshield.task.messages import TrainRequest
from helpers import LOCAL_PER_CLIENT, tiny_config
from test_ray_cluster import FLCERT, own_ray_head

CPU = torch.device("cpu")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


@no_cuda
def test_auto_is_the_cpu_on_a_worker_without_cuda():
    assert resolve_client_device("auto", CPU) == CPU
    assert resolve_client_device(None, CPU) == CPU  # null: the server's device


@no_cuda
@pytest.mark.parametrize(("name", "server", "got"), [("cuda", "cpu", "'cuda'"), (None, "cuda", "null (device='cuda')")])
def test_cuda_on_a_worker_without_cuda_is_one_line_naming_client_device(name, server, got):
    with pytest.raises(ClientDeviceError) as raised:
        resolve_client_device(name, torch.device(server))
    message = str(raised.value)
    assert message.startswith("client.device: CUDA, but the client's worker (") and message.endswith(f"; got {got}")
    assert "\n" not in message


def test_a_malformed_client_device_is_refused_when_the_run_is_built(tmp_path):
    with pytest.raises(ClientDeviceError, match=r"^client\.device: must be null .*; got 'gpu'$"):
        build_experiment(tiny_config(tmp_path, "client.device=gpu"))


@no_cuda
def test_a_cpu_driver_builds_a_run_whose_clients_ask_for_cuda_and_the_client_refuses_it(tmp_path):
    experiment = build_experiment(tiny_config(tmp_path, "client.device=cuda"))
    assert experiment.device == CPU  # the server's
    job = experiment.jobs[0]
    request = TrainRequest(job, job.client_ids[0], 1, get_flat_params(experiment.initial_model(job)), 1)
    with pytest.raises(ClientDeviceError, match=r"^client\.device: CUDA, but"):
        train_step(experiment, request)


@no_cuda
def test_a_server_device_without_cuda_is_still_refused_but_not_in_a_process_that_only_runs_clients(tmp_path):
    cfg = tiny_config(tmp_path, "device=cuda", "client.device=cpu")
    with pytest.raises(ConfigError, match=r"^device='cuda' but CUDA is not available"):
        build_experiment(cfg)
    assert build_experiment(cfg, serves=False).client_device == CPU


def test_clients_train_on_the_client_device_and_reply_on_the_servers(tmp_path):
    experiment = build_experiment(tiny_config(tmp_path, "client.device=auto"))
    job = experiment.jobs[0]
    params = get_flat_params(experiment.initial_model(job))
    reply, _ = train_step(experiment, TrainRequest(job, job.client_ids[0], 1, params, 1))
    assert reply.update.device == params.device
    assert experiment.client_tensors(job.client_ids[0])[0].device == experiment.client_device


def test_client_device_null_and_gpu_share_keep_the_digest_of_runs_saved_before_them_and_a_set_device_changes_it(
    tmp_path,
):
    cfg = tiny_config(tmp_path)
    assert cfg.client.device is None
    before_the_key = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    del before_the_key.client["device"]
    del before_the_key.engine["gpu_share"]  # new too, and changes no result
    assert config_digest(cfg) == config_digest(before_the_key)
    assert config_digest(tiny_config(tmp_path, "client.device=cuda")) != config_digest(cfg)


@pytest.mark.parametrize(
    ("overrides", "num_gpus"),
    [
        ([], 0.0),  # CPU clients ask Ray for no GPU
        (["client.device=cuda"], 0.05),  # LogisticRegression's share
        (["device=cuda", "model=mlp"], 0.1),  # client.device null: the server's device
        (["client.device=auto"], 0.0),  # auto uses a GPU only where one is given
        (["client.device=cuda", "engine.client_resources.num_gpus=0.5"], 0.5),  # a number is kept
    ],
)
def test_a_client_asks_ray_for_its_models_gpu_share_when_it_uses_cuda(tmp_path, overrides, num_gpus):
    cfg = tiny_config(tmp_path, "engine=flower", *overrides)
    engine = instantiate(cfg.engine)
    resources = engine.client_resources_for(build_experiment(cfg, serves=False))
    assert resources == {"num_cpus": 1, "num_gpus": num_gpus}


def test_every_model_has_a_documented_gpu_share(tmp_path):
    shares = tiny_config(tmp_path, "engine=flower").engine.gpu_share
    for model_file in sorted((Path(CONFIG_DIR) / "model").glob("*.yaml")):
        model_class = str(OmegaConf.load(model_file)._target_).rsplit(".", 1)[-1]
        assert model_class in shares, model_file.name


@pytest.mark.parametrize("gpu_share", [{"default": 0}, {"default": "half"}, {"MnistCNN": 0.1}])
def test_a_gpu_share_that_is_not_a_positive_number_or_lacks_a_default_is_refused(gpu_share):
    with pytest.raises(ValueError, match=r"^engine\.gpu_share(\.default)?: .*; got"):
        FlowerEngine(gpu_share=gpu_share)


@pytest.fixture
def ray_head_with_one_gpu():
    """A Ray cluster of this test's own that counts one GPU (Ray does not check it) and 2 CPUs;
    yields (address, session logs folder). Stopped by PID, never `ray stop`."""
    with own_ray_head("--num-gpus=1", prefix="fsgpu") as head:
        yield head


def _client_devices(logs: Path) -> list[str]:
    """The device line each client worker process logged (one per ClientApp actor)."""
    return [
        line
        for log in sorted(logs.glob("worker-*.err"))
        for line in log.read_text(errors="replace").splitlines()
        if line.startswith("fedshield client: device ")
    ]


@pytest.mark.slow
@pytest.mark.flower
def test_two_clients_share_a_counted_gpu_and_give_the_local_engines_votes(tmp_path, ray_head_with_one_gpu, monkeypatch):
    address, logs = ray_head_with_one_gpu
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    run(tiny_config(tmp_path, *FLCERT, *LOCAL_PER_CLIENT, "engine.workers=1", name="local"))
    on_gpu_shares = [f"engine.address={address}", "engine.client_resources.num_gpus=0.5", "client.device=auto"]
    run(tiny_config(tmp_path, *FLCERT, "engine=flower", *on_gpu_shares, name="shared"))
    # Two actors fit (2 CPUs, 1 GPU at 0.5 each); Ray gave each GPU 0, which has no CUDA here: auto is the CPU.
    assert _client_devices(logs) == ["fedshield client: device cpu (client.device=auto; Ray GPU ids ['0'])"] * 2
    assert (tmp_path / "shared" / "votes.npy").read_bytes() == (tmp_path / "local" / "votes.npy").read_bytes()

    with pytest.raises(ClientUserError, match=r"^client\.device: CUDA, but the client's worker .*; got 'cuda'$"):
        run(tiny_config(tmp_path, *FLCERT, "engine=flower", *on_gpu_shares, "client.device=cuda", name="cuda"))
