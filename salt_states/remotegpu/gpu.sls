{#- remotegpu.gpu: the NVIDIA driver, NVML and CUDA where the hardware has them. Guarded by grains: a node whose
    `gpus` grain (lspci) lists no NVIDIA device applies cleanly with a notice and installs nothing. Packages come
    from the OS family's repositories (Debian non-free: nvidia-driver, nvidia-cuda-toolkit; RHEL/Rocky: NVIDIA's
    CUDA repository: nvidia-driver, cuda-toolkit), names overridable in pillar remotegpu:lookup. -#}
{% from "remotegpu/map.jinja" import rg, root, host, host_steps with context %}
{% from "remotegpu/macros.jinja" import host_skip, scratch_note, parent_dir with context %}
{% set nvidia = grains.get('gpus', []) | selectattr('vendor', 'equalto', 'nvidia') | list %}

{% if not nvidia %}
remotegpu_gpu_none:
  test.show_notification:
    - text: {{ ('No NVIDIA GPU on this node (grains gpus: '
               ~ (grains.get('gpus', []) | map(attribute='model') | join(', ') or 'none')
               ~ '): driver and CUDA not installed, nothing to do.'
               ~ ('' if salt['cmd.has_exec']('lspci') else
                  ' lspci is missing here, so Salt sees no GPU at all: install pciutils and refresh grains'
                  ~ ' (saltutil.refresh_grains) if this node has one.')) | json }}
{% else %}
remotegpu_gpu_found:
  test.show_notification:
    - text: {{ ('NVIDIA GPUs: ' ~ nvidia | map(attribute='model') | join(', ')) | json }}

{% if host_steps %}
remotegpu_gpu_driver:
  pkg.installed:
    - pkgs: {{ (rg.os.gpu_driver_pkgs + rg.os.cuda_pkgs) | json }}
    - refresh: False

remotegpu_gpu_persistenced:
  service.running:
    - name: {{ rg.os.persistenced_service }}
    - enable: True
    - require:
      - remotegpu_gpu_driver
{% else %}
{{ host_skip('remotegpu_gpu_driver', 'install ' ~ (rg.os.gpu_driver_pkgs + rg.os.cuda_pkgs) | join(', ')) }}
{{ host_skip('remotegpu_gpu_persistenced', 'start and enable ' ~ rg.os.persistenced_service) }}
{% endif %}
{% endif %}
