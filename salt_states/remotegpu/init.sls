{#- remotegpu: a GPU node of the RemoteGPU cluster, every concern in the order a node needs them. -#}
include:
  - remotegpu.users
  - remotegpu.gpu
  - remotegpu.munge
  - remotegpu.slurmd
  - remotegpu.gemini
  - remotegpu.exporter
