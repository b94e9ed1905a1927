# Source on the GPU machine (device tool) before running a CUDA build of medrl:
#   . scripts/device-env.sh && .device-carry/medrl ...
# The binary is linked against libcuda.so.1 (driver), libcudart.so.13, libcublas.so.13,
# libcublasLt.so.13, libcurand.so.10 and libnvrtc.so.13; none of them travel with it.
# Order: driver (580, CUDA 13.0) first, then the CUDA 13.0 toolkit, then PyTorch's cu13 wheels.
# POSIX sh compatible.
for _medrl_d in \
    /usr/local/nvidia/lib64 \
    /usr/local/cuda-13.0/targets/x86_64-linux/lib \
    /opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib
do
  if [ -d "$_medrl_d" ]; then
    case ":${LD_LIBRARY_PATH:-}:" in
      *":$_medrl_d:"*) ;;
      *) _medrl_ld="${_medrl_ld:+$_medrl_ld:}$_medrl_d" ;;
    esac
  else
    echo "device-env.sh: warning: $_medrl_d not found" >&2
  fi
done
if [ -n "${_medrl_ld:-}" ]; then
  export LD_LIBRARY_PATH="$_medrl_ld${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
unset _medrl_d _medrl_ld
