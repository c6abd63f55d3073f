"""A loopback proxy cuts the package download at 20+ random offsets: the agent resumes with
Range each time, ends with the right sha256, and moves at most 1.5x the package's bytes."""

from __future__ import annotations

from tests.integration.agents.deploy_kit import AgentProcess, CuttingProxy, FleetStub, random_cuts

CUTS = 24


def test_cut_downloads_resume_with_range(deploy_parts, package, short_dir, tmp_path):
    fleet = FleetStub(tmp_path)
    pkg = package("p1", 1)
    size = pkg.stat().st_size
    proxy = CuttingProxy(fleet.url, random_cuts(size, CUTS, seed=7))
    agent = AgentProcess(short_dir / "dev", [deploy_parts["pub"]], endpoint=fleet.url)
    try:
        fleet.publish(pkg, "v1", "tiny", 1, base=proxy.url)
        agent.start().wait_ready()
        record = agent.wait_final("v1", timeout=90)
        assert record["status"] == "SUCCEEDED", record
        assert agent.serving_scale() == 1.0
        assert proxy.connections >= CUTS + 1 and len(fleet.ranges) >= CUTS
        assert record["bytes_received"] == size  # nothing fetched twice
        ratio = proxy.relayed / size  # with every response's headers
        print(f"\n{CUTS} cuts, {proxy.connections} connections, {proxy.relayed} bytes relayed for {size}: {ratio:.3f}x")
        assert ratio <= 1.5
    finally:
        agent.stop()
        proxy.close()
        fleet.close()
