"""The Ray executor: the API server (a subprocess) submits each edit as a Ray task to a local Ray
cluster started by this test (CPU only, so tasks ask for 0 GPUs instead of 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
from service_helpers import ProcessServer, check_result, rgb_tile, roi_polygon, submit, wait

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'rs-edit[scale]'")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def ray_cluster():
    context = ray.init(
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()


def test_ray_executor_runs_and_cancels(tmp_path: Path, ray_cluster: str):
    tiles = [rgb_tile(tmp_path / f"t{i}.tif", seed=i) for i in range(2)]
    roi = roi_polygon(5, 5, 40, 30)
    server = ProcessServer(
        tmp_path / "data",
        *("--executor", "ray", "--ray-address", ray_cluster, "--ray-gpus", "0"),
        *("--workers", "2", "--steps", "20", "--step-s", "0.05"),
        *("--ray-cache-dir", str(tmp_path / "worker-cache")),
        env={"RAY_USAGE_STATS_ENABLED": "0"},
    ).start()
    try:
        with server.client() as c:
            health = c.get("/v1/health").json()
            assert health["executor"]["executor"] == "ray" and health["workers"] == 2
            assert health["executor"]["ray_cpus"] == 2

            jobs = [submit(c, t, roi=roi, clip="tiny-random").json() for t in tiles]
            for job, tile in zip(jobs, tiles, strict=True):
                done = wait(c, job["id"], ("succeeded",), timeout=120)
                assert done["report"]["ray_node"] and done["report"]["model_cached"] is False
                assert done["log"], "log lines from the task reach the job"
                result = tmp_path / f"{job['id']}.tif"
                result.write_bytes(c.get(f"/v1/jobs/{job['id']}/result").content)
                check_result(result, tile, roi)
            # The model cache lives on the Ray worker's machine: the second prompt skips training.
            again = submit(c, tiles[0], "another prompt", roi=roi, clip="tiny-random").json()
            assert wait(c, again["id"], ("succeeded",))["report"]["model_cached"] is True
            assert list((tmp_path / "worker-cache" / "models").glob("*.pt"))

            slow = submit(c, rgb_tile(tmp_path / "slow.tif", seed=9), clip="tiny-random").json()
            wait(c, slow["id"], ("running",), until=lambda j: j["stage"] == "train")
            assert c.delete(f"/v1/jobs/{slow['id']}").status_code == 200
            assert wait(c, slow["id"], timeout=30)["status"] == "cancelled"
    finally:
        server.kill()
