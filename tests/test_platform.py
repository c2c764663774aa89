"""What the agent reads of the board it runs on, against the layouts of the boards it targets, laid out
as their sysfs trees are: throttling on a Pi 4 and a Pi 5, thermal zones and their trip points on a Pi, a
Jetson and x86, the disk under the state directory and an eMMC's wear, a Wi-Fi link's signal; and on this
machine's own kernel, the disk, what is written to it, and a network link that loses its carrier."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.system import (
    ClockWatch,
    LinkWatch,
    ProcessStats,
    clock_problem,
    clock_sync,
    cpu_temperature_c,
    link,
    network_problems,
    power_problems,
    power_rails,
    storage,
    storage_problems,
    storage_summary,
    thermal_problems,
    thermal_summary,
    thermal_zones,
    throttling,
    throttling_problems,
)

from .conftest import wait_until


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text + "\n")
    return root


def test_throttling_on_a_pi4_and_a_pi5_from_sysfs(tmp_path: Path) -> None:
    pi4 = _tree(tmp_path / "pi4", {"sys/devices/platform/soc/soc:firmware/get_throttled": "50005"})
    t = throttling(str(pi4), vcgencmd=False)
    assert t is not None and t["raw"] == "0x50005"
    assert t["under_voltage"] and t["throttled"] and t["under_voltage_occurred"] and not t["arm_freq_capped"]
    pi5 = _tree(tmp_path / "pi5", {
        "sys/devices/platform/soc@107c000000/soc@107c000000:firmware/get_throttled": "80000",
        "sys/devices/platform/soc@107c000000/soc@107c000000:firmware/name": "firmware",
    })
    t = throttling(str(pi5), vcgencmd=False)
    assert t is not None and t["raw"] == "0x80000" and t["soft_temp_limit_occurred"] and not t["throttled"]


def test_health_says_what_holds_now_of_the_firmwares_flags(tmp_path: Path) -> None:
    """Under-voltage now (a Pi 4's 0x50005: also throttled by it) is said once, as the supply's fault; a hot
    board's throttling as heat; flags that only occurred since boot, or no Pi at all, say nothing."""
    def flags(name: str, raw: str) -> dict[str, object] | None:
        return throttling(str(_tree(tmp_path / name, {"sys/devices/platform/soc/soc:firmware/get_throttled": raw})),
                          vcgencmd=False)

    sagging = throttling_problems(flags("sag", "50005"), 51.0)
    assert len(sagging) == 1 and sagging[0].startswith("under-voltage now") and "supply" in sagging[0]
    hot = throttling_problems(flags("hot", "6000e"), 86.2)  # capped, throttled, soft limit; occurred before
    assert hot == ["CPU slowed by the firmware now (throttled, arm freq capped, soft temp limit) at 86 °C: inference "
                   "runs slower; the board is too hot (a heatsink, a fan, shade)"]
    assert throttling_problems(flags("past", "f0000"), 60.0) == []  # all four occurred since boot, none now
    assert throttling_problems(flags("fine", "0"), 45.0) == []
    volt = _tree(tmp_path / "volt", {"sys/class/hwmon/hwmon1/name": "rpi_volt",
                                     "sys/class/hwmon/hwmon1/in0_lcrit_alarm": "1"})
    assert throttling_problems(throttling(str(volt), vcgencmd=False), None)[0].startswith("under-voltage now")
    assert throttling_problems(throttling(str(tmp_path / "x86"), vcgencmd=False)) == []


def test_under_voltage_from_the_rpi_volt_monitor_where_get_throttled_is_missing(tmp_path: Path) -> None:
    pi = _tree(tmp_path / "pi", {
        "sys/class/hwmon/hwmon0/name": "cpu_thermal",
        "sys/class/hwmon/hwmon1/name": "rpi_volt",
        "sys/class/hwmon/hwmon1/in0_lcrit_alarm": "1",
    })
    assert throttling(str(pi), vcgencmd=False) == {"raw": None, "source": "rpi_volt", "under_voltage": True}
    assert throttling(str(tmp_path / "x86"), vcgencmd=False) is None  # not a Pi: no figure, not a wrong one


def _zones(root: Path, zones: list[tuple[str, int]] | list[tuple[str, int | str, list[tuple[str, int]]]]) -> str:
    """Thermal zones (type, temperature in m°C, and trip points: (type, m°C) each) as sysfs lays them out."""
    files = {}
    for i, (kind, milli, *more) in enumerate(zones):
        files[f"thermal_zone{i}/type"] = kind
        files[f"thermal_zone{i}/temp"] = str(milli)
        for j, (what, at) in enumerate(more[0] if more else []):
            files[f"thermal_zone{i}/trip_point_{j}_type"] = what
            files[f"thermal_zone{i}/trip_point_{j}_temp"] = str(at)
    return str(_tree(root, files))


def test_the_cpu_thermal_zone_is_preferred(tmp_path: Path) -> None:
    # a Jetson lists several; its GPU and junction run hotter than its CPU
    jetson = _zones(tmp_path / "jetson", [("GPU-therm", 60500), ("CPU-therm", 45500), ("SOC0-therm", 50000),
                                          ("tj-therm", 61000), ("cv0-therm", 47000)])
    assert cpu_temperature_c(jetson) == 45.5
    assert cpu_temperature_c(_zones(tmp_path / "pi", [("cpu-thermal", 52100)])) == 52.1
    x86 = _zones(tmp_path / "x86", [("iwlwifi_1", 70000), ("acpitz", 27800), ("x86_pkg_temp", 41000)])
    assert cpu_temperature_c(x86) == 41.0  # the package, not the wifi card
    assert cpu_temperature_c(_zones(tmp_path / "odd", [("board", 30000)])) == 30.0  # whatever there is
    assert cpu_temperature_c(str(tmp_path / "none")) is None


def test_the_kernels_thermal_limits_say_when_a_board_is_slowed_or_about_to_be_powered_off(tmp_path: Path) -> None:
    """Trip points as the kernel's thermal ABI lays them out: `passive` (the governor slows the clock) and
    `hot` (Tegra's hardware throttle) slow the board, `critical` powers it off, `active` only starts a fan;
    unused trips with placeholder temperatures and a sensor that fails to read are no limits."""
    jetson = _zones(tmp_path / "jetson", [
        ("cpu-thermal", 71000, [("hot", 99000), ("critical", 104500), ("passive", 95500)]),
        ("gpu-thermal", 78500, [("critical", 104500), ("hot", 99000)]),
        ("tj-thermal", 79000, [("critical", 104500), ("passive", 1000000)]),  # an unused trip: no limit
        ("cv0-thermal", "", [("critical", 104500)]),  # the sensor reads nothing: left out
        ("thermal-fan-est", 60000, [("active", 45000)]),  # a fan's trips only: no limit
        ("soc2-thermal", 99500, [("passive", 95500)]),  # its mode disabled below: the kernel acts on no trip
    ])
    Path(jetson, "thermal_zone5", "mode").write_text("disabled\n")
    Path(jetson, "thermal_zone0", "mode").write_text("enabled\n")
    zones = thermal_zones(jetson)
    assert [(z.kind, z.throttle_c, z.critical_c) for z in zones] == [
        ("cpu-thermal", 95.5, 104.5), ("gpu-thermal", 99.0, 104.5), ("tj-thermal", None, 104.5)]
    assert thermal_problems(zones) == []
    # the nearest to its first limit: the GPU, 20.5 °C under its throttle point (the CPU is 24.5 under)
    assert thermal_summary(zones) == {"zone": "gpu-thermal", "temp_c": 78.5, "limit": "throttle", "limit_c": 99.0,
                                      "headroom_c": 20.5}

    hot = thermal_zones(_zones(tmp_path / "hot", [
        ("cpu-thermal", 96200, [("passive", 95500), ("critical", 104500)]),
        ("gpu-thermal", 101000, [("hot", 99000), ("critical", 104500)]),  # slowed too, but nearer off: said so
        ("soc0-thermal", 90000, [("passive", 95500), ("critical", 104500)]),
    ]))
    assert thermal_problems(hot) == [
        "about to overheat: gpu-thermal at 101 °C (off at 104.5): the kernel powers the board off at its critical "
        "point; cool it now (a heatsink, a fan, shade)",
        "slowed for heat now: cpu-thermal at 96 °C (slowed from 95.5): the CPU or GPU runs slower, and so does "
        "inference; the board is too hot (a heatsink, a fan, shade)",
    ]
    summary = thermal_summary(hot)
    assert summary is not None and summary["zone"] == "gpu-thermal" and summary["headroom_c"] == -2.0

    # a Pi 5: a critical trip and four fan steps; at 78 °C its fan runs flat out and nothing is slowed
    pi5 = thermal_zones(_zones(tmp_path / "pi5", [("cpu-thermal", 78000, [
        ("critical", 110000), ("active", 50000), ("active", 60000), ("active", 67500), ("active", 75000)])]))
    assert thermal_problems(pi5) == []
    assert thermal_summary(pi5) == {"zone": "cpu-thermal", "temp_c": 78.0, "limit": "critical", "limit_c": 110.0,
                                    "headroom_c": 32.0}
    laptop = thermal_zones(_zones(tmp_path / "x86", [("acpitz", 97400, [("critical", 103000), ("passive", 96000)])]))
    assert thermal_problems(laptop)[0].startswith("slowed for heat now: acpitz at 97 °C (slowed from 96)")
    assert thermal_problems(thermal_zones(_zones(tmp_path / "x86b", [("acpitz", 99000, [("critical", 103000)])]))
                            )[0].startswith("about to overheat: acpitz at 99 °C (off at 103)")
    vm = thermal_zones(str(tmp_path / "vm"))  # no zones at all: no figure, not a wrong one
    assert vm == [] and thermal_summary(vm) is None and thermal_problems(vm) == []


def test_the_thermal_figures_have_their_metrics_and_a_place_in_checks_board_row() -> None:
    from edge_agent.human import check
    from edge_agent.metrics import lookup
    from edge_agent.system import ThermalZone

    summary = thermal_summary([ThermalZone("cpu-thermal", 50.0, 95.0, 105.0), ThermalZone("gpu", 61.2, None, 90.0)])
    assert summary is not None and summary["zone"] == "gpu" and summary["limit"] == "critical"
    numbers = [k for k, v in summary.items() if isinstance(v, float)]
    assert numbers == ["temp_c", "limit_c", "headroom_c"]
    assert all(lookup(["system", "thermal", k]) is not None for k in numbers)
    board = {"clock": {"set": True, "synchronized": True}, "cpu_temp_c": 50.0, "memory_available_mb": 900,
             "memory_total_mb": 4000, "thermal": summary}
    row = next(r for r in check({"config": "c.toml", "board": board}).splitlines() if r.startswith("board"))
    assert row.endswith("CPU 50 °C, gpu 29 °C under its critical point"), row


def _block(root: Path, disk: str, partitions: dict[str, str] | None = None, card: dict[str, str] | None = None,
           written_sectors: int = 0) -> Path:
    """A whole disk's sysfs directory at `disk` (under sys/devices), its partitions (name -> major:minor,
    each linked from sys/dev/block as the kernel links them) and, for an MMC card, its card's attributes
    behind the disk's `device` link."""
    d = root / "sys" / "devices" / disk
    _tree(d, {"stat": f"  4120  0  250000  900  {written_sectors // 64}  0  {written_sectors}  7000  0  4000  8000"})
    if card is not None:
        _tree(d.parent.parent, card)
        (d / "device").symlink_to(d.parent.parent)
    links = root / "sys" / "dev" / "block"
    links.mkdir(parents=True, exist_ok=True)
    for name, dev in (partitions or {}).items():
        _tree(d / name, {"partition": name[-1], "stat": "1 0 8 0 0 0 0 0 0 0 0"})
        (links / dev).symlink_to(d / name)
    return d


def test_the_wear_an_emmc_reports_is_read_from_the_disk_under_the_state_directory(tmp_path: Path) -> None:
    """The disk under the state directory found as the kernel links it (a partition's disk; through device
    mapper, the disk beneath), and an eMMC's own word on its wear (JEDEC's life-time bands and pre-EOL
    level, as drivers/mmc/core/mmc.c prints them): worn out is a problem, healthy or unknown is not."""
    mmc = "platform/bus@100000/3400000.mmc/mmc_host/mmc0/mmc0:0001/block/mmcblk0"

    def emmc(name: str, life: str, eol: str) -> Path:
        _block(tmp_path / name, mmc, {"mmcblk0p1": "179:1"}, {"type": "MMC", "life_time": life, "pre_eol_info": eol},
               written_sectors=2_048_000)
        return tmp_path / name / "sys"

    fine = storage(Path("/var/lib/edge-agent"), str(emmc("jetson", "0x01 0x02", "0x01")), dev=(179, 1))
    assert storage_summary(fine) == {"device": "mmcblk0", "kind": "eMMC", "life_used_pct": 20,
                                     "past_rated_life": False, "pre_eol": "normal", "written_mb": 1048.6,
                                     "fs_errors": None, "fs_last_error_ts": None}  # no ext4 said in this tree
    assert storage_problems(fine) == []
    worn = storage(Path("/x"), str(emmc("worn", "0x0A 0x09", "0x02")), dev=(179, 1))
    assert storage_problems(worn) == [
        "storage wearing out: mmcblk0 (eMMC, the state directory's) has 80% of its spare blocks used (pre-EOL "
        "warning), 90-100% of its rated writes used: replace it before it fails, or write less to it (clips, the "
        "outbox)"]
    past = storage(Path("/x"), str(emmc("past", "0x0B 0x0A", "0x03")), dev=(179, 1))
    assert past is not None and past.life_used_pct == 100 and past.past_rated_life
    assert storage_problems(past)[0].startswith("storage about to fail: mmcblk0 (eMMC, the state directory's) has "
                                                "nearly all of its spare blocks used (pre-EOL urgent), past its rated "
                                                "writes: ")
    assert storage_problems(storage(Path("/x"), str(emmc("eighty", "0x09 0x01", "0x01")), dev=(179, 1))) == []
    unknown = storage(Path("/x"), str(emmc("old", "0x00 0x00", "0x00")), dev=(179, 1))  # an eMMC before 5.0
    assert unknown is not None and unknown.life_used_pct is None and unknown.pre_eol is None
    assert storage_problems(unknown) == []
    # LUKS over the eMMC's partition: device mapper's dm-0, whose one slave is the partition
    luks = emmc("luks", "0x03 0x03", "0x01")
    dm = _block(tmp_path / "luks", "virtual/block/dm-0")
    (dm / "slaves").mkdir()
    (dm / "slaves" / "mmcblk0p1").symlink_to(luks / "devices" / mmc / "mmcblk0p1")
    (luks / "dev" / "block" / "254:0").symlink_to(dm)
    under = storage(Path("/x"), str(luks), dev=(254, 0))
    assert under is not None and (under.device, under.kind, under.life_used_pct) == ("mmcblk0", "eMMC", 30)
    # a Pi's SD card, a Pi 5's NVMe drive, a USB stick: no wear figure, no problem
    pi = tmp_path / "pi"
    _block(pi, "platform/axi/1000fff000.mmc/mmc_host/mmc0/mmc0:aaaa/block/mmcblk0", {"mmcblk0p2": "179:2"},
           {"type": "SD"})
    sd = storage(Path("/x"), str(pi / "sys"), dev=(179, 2))
    assert sd is not None and (sd.device, sd.kind, sd.life_used_pct, sd.pre_eol) == ("mmcblk0", "SD card", None, None)
    assert storage_problems(sd) == []
    _block(pi, "platform/axi/1000110000.pcie/pci0001:01/0001:01:00.0/nvme/nvme0/nvme0n1", {"nvme0n1p2": "259:2"})
    assert storage(Path("/x"), str(pi / "sys"), dev=(259, 2)).kind == "NVMe"  # type: ignore[union-attr]
    _block(pi, "platform/axi/1000480000.usb/usb1/1-1/1-1:1.0/host0/target0:0:0/0:0:0:0/block/sda", {"sda1": "8:1"})
    assert storage(Path("/x"), str(pi / "sys"), dev=(8, 1)).kind == "USB"  # type: ignore[union-attr]
    # tmpfs and overlay are on no block device: no figure, not a wrong one
    assert storage(Path("/x"), str(pi / "sys"), dev=(0, 45)) is None
    assert storage_summary(None) is None and storage_problems(None) == []


def test_the_disk_under_a_folder_and_what_is_written_to_it_are_read_off_this_machine(tmp_path: Path) -> None:
    """This machine's own sysfs: the disk under a folder is the one util-linux names, and 16 MB written
    and synced shows in the disk's count since boot and in the agent's own."""
    import os
    import subprocess

    source = subprocess.run(["findmnt", "-no", "SOURCE", "-T", str(tmp_path)], capture_output=True, text=True,
                            check=True).stdout.strip()
    parent = subprocess.run(["lsblk", "-no", "PKNAME", source], capture_output=True, text=True,
                            check=True).stdout.strip()
    here = storage(tmp_path)
    assert here is not None and here.device == (parent or os.path.basename(source)) and here.written_mb is not None
    above = storage(tmp_path / "not" / "made" / "yet")  # the folder above it that exists
    assert above is not None and above.device == here.device
    proc = ProcessStats()
    ours = proc.sample()["written_mb"]
    assert ours is not None
    with open(tmp_path / "f", "wb") as f:
        f.write(os.urandom(16 * 2**20))
        f.flush()
        os.fsync(f.fileno())
    after = storage(tmp_path)
    assert after is not None and after.written_mb is not None and after.written_mb - here.written_mb >= 16
    assert (proc.sample()["written_mb"] or 0) - ours >= 16
    shm = subprocess.run(["findmnt", "-no", "FSTYPE", "-T", "/dev/shm"], capture_output=True, text=True).stdout
    if shm.strip() == "tmpfs":
        assert storage(Path("/dev/shm")) is None


def test_errors_an_ext4_file_system_has_met_are_a_problem_until_fsck_clears_them(tmp_path: Path) -> None:
    """A real ext4 file system on a loop device of this machine's kernel, its superblock's error count set as
    the kernel sets it when it meets a damaged block (by debugfs, which writes the same field; damaging a
    block for real would have the kernel act on it as well), mounted: the state directory on it says its
    errors and when the last was, and the count that fsck clears says nothing."""
    import subprocess

    image, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    mnt.mkdir()

    def sh(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, timeout=60)

    with open(image, "wb") as f:
        f.truncate(16 << 20)
    sh("mkfs.ext4", "-q", str(image))
    sh("debugfs", "-w", "-R", "ssv error_count 3", str(image))
    sh("debugfs", "-w", "-R", "ssv last_error_time 20261201120000", str(image))
    sh("mount", "-o", "loop", str(image), str(mnt))
    try:
        state = mnt / "state"
        state.mkdir()
        worn = storage(state)
        assert worn is not None and worn.device.startswith("loop") and worn.kind == "loop"
        assert (worn.fs, worn.fs_errors, worn.fs_last_error_ts) == (worn.device, 3, 1796126400.0)
        assert storage_problems(worn) == [
            f"file system errors: {worn.fs} (the state directory's, on {worn.device}, loop) has met 3 (the last at "
            "2026-12-01 12:00 UTC): the card or disk is failing, or lost power while writing; check it with fsck, "
            "which clears the count, and plan to replace it"]
    finally:
        sh("umount", str(mnt))
    fsck = subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True, timeout=60)
    assert fsck.returncode in (0, 1), fsck.stdout  # 1: it corrected something; it clears the count either way
    sh("mount", "-o", "loop", str(image), str(mnt))
    try:
        fixed = storage(mnt)
        assert fixed is not None and fixed.fs_errors == 0 and storage_problems(fixed) == []
    finally:
        sh("umount", str(mnt))


def test_the_storage_figures_have_their_metrics_and_a_row_in_check() -> None:
    from edge_agent.human import check
    from edge_agent.metrics import lookup
    from edge_agent.system import Storage

    summary = storage_summary(Storage("mmcblk0", "eMMC", 20, False, "warning", 1048.6))
    assert summary is not None
    summary = {**summary, "fs_errors": 2, "fs_last_error_ts": 1796126400.0}
    numbers = [k for k, v in summary.items() if isinstance(v, (int, float)) and v is not None]
    assert numbers == ["life_used_pct", "past_rated_life", "written_mb", "fs_errors", "fs_last_error_ts"]
    assert all(lookup(["system", "storage", k]) is not None for k in numbers)
    assert lookup(["process", "written_mb"]) is not None
    board = {"clock": {"set": True, "synchronized": True}, "memory_available_mb": 900, "memory_total_mb": 4000,
             "disk_free_mb": 5123.4, "storage": summary}
    rows = check({"config": "c.toml", "board": board}).splitlines()
    row = next(r for r in rows if r.startswith("storage"))
    assert row.split(None, 1)[1] == ("mmcblk0 (eMMC), 10-20% of its rated writes used, spare blocks warning, "
                                     "2 file system errors, 5123 MB free")
    board["storage"] = storage_summary(Storage("mmcblk0", "SD card", None, False, None, 1.0))
    row = next(r for r in check({"config": "c.toml", "board": board}).splitlines() if r.startswith("storage"))
    assert row.split(None, 1)[1] == "mmcblk0 (SD card), no wear figure, 5123 MB free"


def test_a_wifi_links_signal_is_read_as_its_driver_reports_it(tmp_path: Path) -> None:
    """`/proc/net/wireless` as cfg80211 writes it (the Pi's brcmfmac, a USB dongle): the level in dBm; a weak
    one under `health.min_wifi_signal_dbm` is a problem, and a driver that gives its own 0-100 scale gives no
    dBm rather than a wrong one."""
    def board(name: str, lines: list[str]) -> tuple[str, str]:
        root = _tree(tmp_path / name, {
            "sys/class/net/wlan0/type": "1", "sys/class/net/wlan0/operstate": "up",
            "sys/class/net/wlan0/carrier_changes": "4", "sys/class/net/wlan0/wireless/.keep": "",
            "proc/net/wireless": "\n".join([
                "Inter-| sta-|   Quality        |   Discarded packets               | Missed | WE",
                " face | tus | link level noise |  nwid  crypt   frag  retry   misc | beacon | 22", *lines]),
        })
        return str(root / "sys"), str(root / "proc")

    pi = link("wlan0", *board("pi", ["wlan0: 0000   54.  -56.  -256        0      0      0      0      0        0"]))
    assert pi == {"interface": "wlan0", "kind": "wifi", "up": True, "carrier_changes": 4, "speed_mbps": None,
                  "signal_dbm": -56.0}
    assert network_problems({**pi, "flaps": 0}, -80) == []
    far = link("wlan0", *board("far", ["wlan1: 0000   60.  -40.  -256  0 0 0 0 0 0",
                                       "wlan0: 0000   14.  -83.  -256  0 0 0 0 0 0"]))
    assert far["signal_dbm"] == -83.0
    assert network_problems({**far, "flaps": 0}, -80) == [
        "Wi-Fi signal weak: wlan0 at -83 dBm (floor -80): messages are lost and sent again, and the broker "
        "connection drops; move the box or the access point closer, or use an antenna or a cable"]
    assert network_problems({**far, "flaps": 0}, 0) == []  # 0: never
    from edge_agent.human import check

    rows = check({"config": "c.toml", "network": {**far, "flaps": None}}).splitlines()
    assert next(r for r in rows if r.startswith("network")).split(None, 1)[1] == \
        "wlan0: wifi, up, signal -83 dBm, its link lost 2 times since boot"
    scaled_only = link("wlan0", *board("dongle", ["wlan0: 0000   70.  45.  0  0 0 0 0 0 0"]))
    assert scaled_only["signal_dbm"] is None
    assert network_problems(None, -80) == []


def test_a_link_that_keeps_losing_its_carrier_is_said_to_flap() -> None:
    """A real link on this machine's kernel (a veth pair, its far end taken down and up as a loose cable or
    a failing PoE port would): found from its address as the broker connection's would be, each loss
    counted from `carrier_changes`, two within ten minutes a problem, and none once they are older."""
    import os
    import subprocess

    near, far = f"ea{os.getpid() % 10**6}a", f"ea{os.getpid() % 10**6}b"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)

    subprocess.run(["ip", "link", "del", near], capture_output=True, timeout=10)  # one a killed run left
    ip("link", "add", near, "type", "veth", "peer", "name", far)
    try:
        ip("addr", "add", "10.231.77.1/30", "dev", near)
        ip("link", "set", near, "up")
        ip("link", "set", far, "up")
        watch = LinkWatch()
        assert watch.sample(None) is None  # no connection yet: no link to speak of
        first = wait_until(lambda: (d := watch.sample("10.231.77.1", now=0.0)) and d["up"] and d, 10,
                           what="the link up")
        assert first["interface"] == near and first["kind"] == "ethernet" and first["flaps"] == 0
        for _ in range(2):
            base = int(Path(f"/sys/class/net/{near}/carrier_changes").read_text())
            ip("link", "set", far, "down")
            wait_until(lambda b=base: int(Path(f"/sys/class/net/{near}/carrier_changes").read_text()) > b, 10,
                       what="the carrier lost")
            ip("link", "set", far, "up")
            wait_until(lambda b=base: int(Path(f"/sys/class/net/{near}/carrier_changes").read_text()) > b + 1, 10,
                       what="the carrier back")
        now = watch.sample(None, now=300.0)  # the connection's address not known now: the same link is watched
        assert now is not None and now["flaps"] == 2 and now["carrier_changes"] == first["carrier_changes"] + 4
        assert network_problems(now, -80)[0].startswith(f"network link flapping: {near} lost its link 2 times in "
                                                        "the last 10 minutes")
        later = watch.sample(None, now=1000.0)  # both losses over ten minutes ago
        assert later is not None and later["flaps"] == 0 and network_problems(later, -80) == []
    finally:
        subprocess.run(["ip", "link", "del", near], capture_output=True, timeout=10)


def test_supply_rails_are_read_from_current_monitors_and_over_current_is_a_problem(tmp_path: Path) -> None:
    """hwmon trees as the ina3221 and ina2xx drivers lay them out: a Jetson Orin Nano's three labelled rails
    (one over its current limit, which throttles the module), a disabled channel, a Pi's INA219 UPS HAT
    without labels, and a temperature sensor that is no current monitor; a board without any says nothing."""
    jetson = _tree(tmp_path / "jetson", {
        "hwmon0/name": "cpu_thermal", "hwmon0/temp1_input": "51000",
        "hwmon1/name": "ina3221",
        "hwmon1/in1_label": "VDD_IN", "hwmon1/in1_input": "5072", "hwmon1/curr1_input": "1208",
        "hwmon1/curr1_crit": "3000", "hwmon1/curr1_crit_alarm": "0", "hwmon1/curr1_max_alarm": "0",
        "hwmon1/in2_label": "VDD_CPU_GPU_CV", "hwmon1/in2_input": "5064", "hwmon1/curr2_input": "1650",
        "hwmon1/curr2_crit": "1600", "hwmon1/curr2_crit_alarm": "1",
        "hwmon1/in3_label": "VDD_SOC", "hwmon1/in3_input": "0", "hwmon1/curr3_input": "0", "hwmon1/in3_enable": "0",
        "hwmon1/in4_input": "6040", "hwmon1/curr4_input": "2858",  # shunt voltage and the sum: no rail
    })
    rails = power_rails(str(jetson))
    assert rails == {
        "VDD_IN": {"volts": 5.072, "amps": 1.208, "watts": 6.13, "limit_amps": 3.0, "over_current": False},
        "VDD_CPU_GPU_CV": {"volts": 5.064, "amps": 1.65, "watts": 8.36, "limit_amps": 1.6, "over_current": True},
    }
    assert power_problems(rails) == [
        "over-current now: VDD_CPU_GPU_CV at 1.65 A (limit 1.6): the board throttles its CPU and GPU, and inference "
        "slows; a stronger supply or a lower power mode (a Jetson's nvpmodel)"]
    hat = _tree(tmp_path / "pi", {"hwmon2/name": "ina219", "hwmon2/in0_input": "12", "hwmon2/in1_input": "5120",
                                  "hwmon2/curr1_input": "640", "hwmon2/power1_input": "3276800"})
    assert power_rails(str(hat)) == {"ina219 1": {"volts": 5.12, "amps": 0.64, "watts": 3.28, "limit_amps": None,
                                                  "over_current": False}}
    assert power_problems(power_rails(str(hat))) == []
    assert power_rails(str(tmp_path / "x86")) == {} and power_problems({}) == []

    from edge_agent.human import check
    from edge_agent.metrics import lookup

    assert all(lookup(["system", "power", "VDD_IN", k]) is not None for k in rails["VDD_IN"])
    board = {"clock": {"set": True, "synchronized": True}, "memory_available_mb": 900, "memory_total_mb": 4000,
             "power": rails}
    row = next(r for r in check({"config": "c.toml", "board": board}).splitlines() if r.startswith("board"))
    assert row.endswith("(NTP synchronized), VDD_IN 6.1 W"), row


def test_time_limits_scale_with_the_speed_of_the_machine() -> None:
    """Under EDGE_TEST_SLOWDOWN=4 (a board four times slower) a wait gets four times as long; without
    it, this machine's own measurement decides (x1 here)."""
    import os
    import subprocess
    import sys

    from .conftest import ROOT, SLOWDOWN, scaled

    assert SLOWDOWN >= 1 and scaled(2.0) == 2.0 * SLOWDOWN
    code = "from tests.conftest import SLOWDOWN, scaled; print(SLOWDOWN, scaled(3))"
    env = {**os.environ, "EDGE_TEST_SLOWDOWN": "4"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert r.returncode == 0 and r.stdout.split() == ["4.0", "12.0"], r.stderr


def test_the_agents_own_memory_follows_what_it_allocates_not_the_files_it_maps(tmp_path: Path) -> None:
    """`process.anon_mb`: 64 MB allocated and written shows in it, and goes when freed; 64 MB of a file
    mapped and read shows in the RSS only."""
    import mmap

    stats = ProcessStats()
    before = stats.sample()
    assert before["anon_mb"] is not None and 5 < before["anon_mb"] < before["rss_mb"]
    # private anonymous memory, as malloc maps for a large block; through malloc itself, a test process
    # whose heap held a freed block that large got it back without a page more, and nothing moved
    held = mmap.mmap(-1, 64 * 2**20, flags=mmap.MAP_PRIVATE)
    held[:: 4096] = b"x" * len(range(0, len(held), 4096))  # every page written
    grown = stats.sample()
    assert grown["anon_mb"] is not None and grown["anon_mb"] - before["anon_mb"] > 60
    held.close()
    freed = stats.sample()
    assert freed["anon_mb"] is not None and freed["anon_mb"] < grown["anon_mb"] - 60
    f = tmp_path / "file"
    f.write_bytes(b"y" * 64 * 2**20)
    with open(f, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert sum(m[k] for k in range(0, len(m), 4096)) == ord("y") * (len(m) // 4096)
        mapped = stats.sample()
        assert mapped["rss_mb"] - freed["rss_mb"] > 60
        assert mapped["anon_mb"] is not None and abs(mapped["anon_mb"] - freed["anon_mb"]) < 8
    assert ProcessStats(str(tmp_path / "missing")).sample()["anon_mb"] is None  # not Linux: said so, not 0


def test_the_kernels_word_on_the_clock_is_read_as_it_gives_it() -> None:
    """adjtimex read for real, against glibc's other reading of the same kernel state (`ntp_gettime`, its
    own structure): the same maximum error (to the 0.5 ms a second it grows by), the same verdict."""
    import ctypes

    class NtpTimeval(ctypes.Structure):
        _fields_ = [("sec", ctypes.c_long), ("usec", ctypes.c_long), ("maxerror", ctypes.c_long),
                    ("esterror", ctypes.c_long), ("tai", ctypes.c_long), ("reserved", ctypes.c_long * 4)]

    got = clock_sync()
    tv = NtpTimeval()
    state = ctypes.CDLL(None).ntp_gettime(ctypes.byref(tv))
    assert got is not None and state >= 0
    synced, max_error_ms = got
    assert 0 <= max_error_ms <= 16000 and abs(max_error_ms - tv.maxerror / 1000) < 5
    assert not synced or (state != 5 and max_error_ms < 16000)  # TIME_ERROR: unsynchronized
    assert synced or state == 5 or max_error_ms >= 16000


def test_a_step_of_the_wall_clock_is_counted_and_a_clock_never_set_is_a_problem() -> None:
    """A board without a real-time clock boots at 1970 (a problem: every stamp is wrong), then NTP steps it
    forward; the step is counted and its size kept. Slewing of a few ms between looks is no step."""
    wall, mono = [10.0], [5.0]
    watch = ClockWatch(lambda: wall[0], lambda: mono[0], lambda: (False, 16000.0))
    first = watch.sample()
    assert first == {"set": False, "synchronized": False, "max_error_ms": 16000.0, "steps": 0, "last_step_s": None}
    said = clock_problem(first, wall[0])
    assert said is not None and said.startswith("clock not set (it reads 1970-01-01 00:00 UTC)")
    wall[0], mono[0] = wall[0] + 60.004, mono[0] + 60.0  # NTP slewing: 4 ms in a minute
    assert watch.sample()["steps"] == 0
    wall[0], mono[0] = wall[0] + 3601.5, mono[0] + 3600.0  # at its fastest, 1.5 s over an hour between looks
    assert watch.sample()["steps"] == 0
    offset = wall[0] - mono[0]
    wall[0], mono[0] = 1_796_000_000.0, mono[0] + 1.0  # NTP found: 2026-11-29
    stepped = watch.sample()
    assert stepped["set"] and stepped["steps"] == 1
    assert stepped["last_step_s"] == pytest.approx(wall[0] - mono[0] - offset)
    assert clock_problem(stepped, wall[0]) is None
    wall[0], mono[0] = wall[0] - 3600, mono[0] + 10  # set back an hour (a person, a time zone taken for UTC)
    back = watch.sample()
    assert back["steps"] == 2 and back["last_step_s"] == pytest.approx(-3610.0)
    live = ClockWatch().sample()  # this machine's own clock: set, and no step between two looks
    assert live["set"] and ClockWatch().sample()["steps"] == 0
