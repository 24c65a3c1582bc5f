# Sourced by the LLaVA-NeXT launch scripts: keep the published global batch whatever the device count.
# In: GLOBAL_BATCH, PER_DEVICE, DEVICES (processes in the job). Out: PER_DEVICE (lowered when the
# devices alone exceed the global batch) and ACCUM = GLOBAL_BATCH / (PER_DEVICE * DEVICES).
if (( PER_DEVICE * DEVICES > GLOBAL_BATCH )); then PER_DEVICE=$(( GLOBAL_BATCH / DEVICES )); fi
if (( PER_DEVICE < 1 || GLOBAL_BATCH % (PER_DEVICE * DEVICES) != 0 )); then
  echo "GLOBAL_BATCH=$GLOBAL_BATCH cannot be split over $DEVICES devices with PER_DEVICE=$PER_DEVICE" >&2
  exit 2
fi
ACCUM=$(( GLOBAL_BATCH / (PER_DEVICE * DEVICES) ))
