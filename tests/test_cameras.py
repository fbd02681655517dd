import torch

from threedistill.core.cameras import (
    OrbitSampler,
    OrbitSamplerConfig,
    heldout_cameras,
    orbit_cameras,
    view_direction_labels,
)


def test_sampler_respects_ranges() -> None:
    cfg = OrbitSamplerConfig(batch_size=64, elevation_range=(-5, 30), distance_range=(2.0, 2.5), fov_range=(30, 50))
    cams = OrbitSampler(cfg).sample(torch.Generator().manual_seed(0))
    assert len(cams) == 64
    assert cams.elevation.min() >= -5 and cams.elevation.max() <= 30
    assert cams.distance.min() >= 2.0 and cams.distance.max() <= 2.5
    fov = torch.rad2deg(cams.fov_y)
    assert fov.min() >= 30 - 1e-4 and fov.max() <= 50 + 1e-4
    assert cams.azimuth.min() >= -180 and cams.azimuth.max() < 180
    # camera centres sit at the sampled distance
    torch.testing.assert_close(cams.positions.norm(dim=-1), cams.distance)


def test_stratified_azimuth_covers_every_sector() -> None:
    cfg = OrbitSamplerConfig(batch_size=8)
    for seed in range(5):
        cams = OrbitSampler(cfg).sample(torch.Generator().manual_seed(seed))
        sectors = torch.floor((cams.azimuth + 180.0) / 45.0).long().sort().values
        assert sectors.tolist() == list(range(8))


def test_sampler_is_seeded() -> None:
    cfg = OrbitSamplerConfig()
    a = OrbitSampler(cfg).sample(torch.Generator().manual_seed(3))
    b = OrbitSampler(cfg).sample(torch.Generator().manual_seed(3))
    torch.testing.assert_close(a.c2w, b.c2w)


def test_c2w_is_a_rotation_looking_at_origin_with_opencv_axes() -> None:
    cams = heldout_cameras(16)
    R = cams.c2w[:, :3, :3]
    torch.testing.assert_close(R.transpose(1, 2) @ R, torch.eye(3).expand(16, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(16), atol=1e-5, rtol=0)
    forward = R[:, :, 2]
    torch.testing.assert_close(forward, -torch.nn.functional.normalize(cams.positions, dim=-1), atol=1e-5, rtol=0)
    # image "down" (y) points toward world -z for cameras near the horizon
    assert (R[:, 2, 1] < 0).all()


def test_origin_projects_to_image_centre() -> None:
    cams = heldout_cameras(4, 64, 48)
    p = cams.viewmats() @ torch.tensor([0.0, 0.0, 0.0, 1.0])
    uv = (cams.intrinsics() @ p[:, :3, None]).squeeze(-1)
    torch.testing.assert_close(uv[:, :2] / uv[:, 2:], torch.tensor([[32.0, 24.0]]).expand(4, 2), atol=1e-4, rtol=0)


def test_view_labels() -> None:
    el = torch.tensor([0.0, 0.0, 0.0, 0.0, 70.0])
    az = torch.tensor([10.0, 90.0, 170.0, -100.0, 0.0])
    cams = orbit_cameras(el, az, torch.full((5,), 3.0), torch.full((5,), 40.0), 8, 8)
    assert view_direction_labels(cams) == ["front", "side", "back", "side", "overhead"]
