"""``otakey firmware build``: a product file becomes the factory image of its product order, whose
keystore sector B carries exactly that PO's factory record (read back through the ELF's symbols)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from otakey.agent.product_file import ProductFile
from otakey.firmware import FirmwareBuildError, FirmwareElf, build_firmware, load_product
from otakey.firmware.build import CACHE_ENV
from otakey.protocol.keystore import AREA_A, AREA_B, decode_record

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def build_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One build cache for the session's tests (the first build compiles the core once)."""
    cache = Path(tmp_path_factory.getbasetemp()) / "otakey-cache"
    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(cache)
    yield cache
    if old is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = old


def make_product(folder: Path, name: str, po_id: int) -> tuple[ProductFile, Path]:
    pf = ProductFile(po_name=name, po_id=po_id, pk=os.urandom(32), quantity=10)
    path = folder / f"{name}.product.json"
    pf.write(path)
    return pf, path


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ if env is None else env)
    full["PYTHONPATH"] = str(ROOT / "agent")
    return subprocess.run([sys.executable, "-m", "otakey", *args], capture_output=True, text=True,
                          env=full, timeout=300)


@pytest.fixture(scope="module")
def product_a(tmp_path_factory: pytest.TempPathFactory) -> tuple[ProductFile, Path]:
    return make_product(tmp_path_factory.mktemp("products"), "PO-BUILD-A", 41)


@pytest.fixture(scope="module")
def built_a(product_a: tuple[ProductFile, Path], tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("fw-a")
    r = cli("firmware", "build", "--product", str(product_a[1]), "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_firmware_build_puts_the_po_factory_record_in_keystore_area_b(product_a, built_a):
    pf, _ = product_a
    elf = FirmwareElf(built_a["elf"])
    area_b = elf.area_image(AREA_B)
    state = decode_record(area_b, elf.area(AREA_B).size)
    assert (state.po_id, state.po_name, state.pk, state.generation) == (pf.po_id, pf.po_name, pf.pk, 1)
    assert state.ak is None and state.cloud is None
    assert elf.area_image(AREA_A) == b"\xff" * elf.area(AREA_A).size
    record = pf.factory_record()
    assert area_b[:len(record)] == record and set(area_b[len(record):]) == {0xFF}
    # The record's own markers and the area symbols agree with the sections the linker placed.
    start, end = elf.factory_record_range or (0, 0)
    assert (start, end - start) == (elf.area(AREA_B).address, len(record))
    assert elf.section(".keystore_a") == (elf.area(AREA_A).address, elf.area(AREA_A).size)
    assert elf.section(".keystore_b") == (elf.area(AREA_B).address, elf.area(AREA_B).size)
    assert elf.area(AREA_A).end <= elf.area(AREA_B).address < elf.area(AREA_B).end <= elf.app_range[0]
    assert elf.vector_table.reset & ~1 == elf.entry & ~1


def test_firmware_build_reports_the_size_and_budget_check(built_a):
    report = built_a["size_report"]
    assert "filename" in report and "budget check passed" in report
    assert built_a["cached"] is False and Path(built_a["out_dir"], "otakey-fw.bin").is_file()


def test_firmware_build_writes_the_image_readable_by_its_owner_only(built_a):
    # It carries the PK, like the product file.
    for name in ("otakey-fw.elf", "otakey-fw.bin", "otakey-fw.hex"):
        assert Path(built_a["out_dir"], name).stat().st_mode & 0o077 == 0


def test_firmware_build_of_the_same_product_reuses_the_image(product_a, built_a):
    elf = Path(built_a["elf"])
    mtime = elf.stat().st_mtime_ns
    again = build_firmware(product_a[1], built_a["out_dir"])
    assert again.cached and again.elf == elf and elf.stat().st_mtime_ns == mtime


def test_firmware_images_of_two_pos_differ_only_in_the_factory_record(built_a, tmp_path: Path):
    _, path_b = make_product(tmp_path, "PO-BUILD-B", 42)
    other = FirmwareElf(build_firmware(path_b, tmp_path / "fw-b").elf)
    first = FirmwareElf(built_a["elf"])
    assert other.app_image() == first.app_image()  # the device hashes the same application
    assert other.areas == first.areas
    assert other.area_image(AREA_B) != first.area_image(AREA_B)
    assert other.factory_state().po_name == "PO-BUILD-B"


def test_firmware_info_shows_the_layout_without_the_key(product_a, built_a):
    r = cli("firmware", "info", built_a["elf"])
    assert r.returncode == 0, r.stderr
    assert "keystore area B" in r.stdout and "PO PO-BUILD-A (number 41), holds PK" in r.stdout
    assert product_a[0].pk.hex() not in r.stdout


@pytest.mark.parametrize(("content", "says"), [
    (None, "does not exist"),
    ("{not json", "is not valid JSON"),
    ('["a list"]', "must hold one JSON object"),
    ('{"format": "something-else"}', "is not an OTA-Key product file"),
    ('{"format": "otakey-product/1", "po_name": "PO-1", "po_id": 1}', "has no 'pk' field"),
    ('{"format": "otakey-product/1", "po_name": "PO-1", "po_id": 1, "pk": "12ab"}',
     "'pk' must be 64 hex digits"),
    ('{"format": "otakey-product/1", "po_name": "", "po_id": 1, "pk": "' + "00" * 32 + '"}',
     "'po_name' must be"),
    ('{"format": "otakey-product/1", "po_name": "PO-1", "po_id": -3, "pk": "' + "00" * 32 + '"}',
     "'po_id' must be an integer"),
    ('{"format": "otakey-product/1", "po_name": "PO-1", "po_id": 1, "pk": "' + "00" * 32
     + '", "factory_record": "00ff"}', "'factory_record' is not a valid keystore record"),
])
def test_firmware_build_refuses_a_bad_product_file_with_one_clear_sentence(tmp_path: Path, content, says):
    path = tmp_path / "p.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(FirmwareBuildError, match=says) as info:
        load_product(path)
    assert "\n" not in str(info.value)


def test_firmware_build_refuses_a_record_that_contradicts_the_fields(tmp_path: Path):
    _, path = make_product(tmp_path, "PO-EDIT", 5)
    data = json.loads(path.read_text())
    data["po_id"] = 6  # hand-edited: the record still says 5
    path.write_text(json.dumps(data))
    with pytest.raises(FirmwareBuildError, match="does not match po_id, po_name and pk"):
        load_product(path)


def test_firmware_build_cli_error_is_one_line_without_traceback(tmp_path: Path):
    r = cli("firmware", "build", "--product", str(tmp_path / "missing.json"))
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "missing.json does not exist" in r.stderr


def test_firmware_build_without_the_cross_compiler_says_run_setup(tmp_path: Path, monkeypatch):
    _, path = make_product(tmp_path, "PO-NOGCC", 9)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "cmake").symlink_to(shutil.which("cmake") or "/usr/bin/cmake")
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(FirmwareBuildError, match=r"arm-none-eabi-gcc is not installed.*scripts/setup\.sh"):
        build_firmware(path, tmp_path / "out")
    assert not (tmp_path / "out" / "otakey-fw.elf").exists()
