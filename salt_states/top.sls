# Every minion the gateway provisions is a RemoteGPU GPU node; its pillar (sent per run) says what it gets.
base:
  '*':
    - remotegpu
