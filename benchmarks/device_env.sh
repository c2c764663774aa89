# Sourced by the device_*.sh scripts on the lent GPU machine: Vulkan and GL loaders, mosquitto, the wheels.
# Needs, carried from here: .gl, .mq, .whl (../shared/device/prepare.sh fills them) and models.
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
mkdir -p /tmp/mq && for f in .mq/*.deb; do dpkg -x "$f" /tmp/mq; done
export PATH=/tmp/mq/usr/sbin:/tmp/mq/usr/bin:$PATH
export LD_LIBRARY_PATH=/tmp/mq/usr/lib/x86_64-linux-gnu:/tmp/mq/lib/x86_64-linux-gnu
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
