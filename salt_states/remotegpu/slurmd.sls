{#- remotegpu.slurmd: slurmd with this node's gres.conf (from pillar remotegpu:node:gpus, or AutoDetect=nvml when
    remotegpu:node:gres_autodetect is "nvml"), cgroup.conf, and either a slurm.conf that includes the cluster's
    shared file or configless mode (remotegpu:slurm:include_url, slurmctld's host:port, as --conf-server); then the
    slurmd service, restarted when one of them changes. All files under <root>. -#}
{% from "remotegpu/map.jinja" import rg, root, host, host_steps with context %}
{% from "remotegpu/macros.jinja" import host_skip, owner, scratch_note, parent_dir with context %}
{% set conf_dir = rg.slurm.conf_dir.rstrip('/') %}
{% set node = rg.node.name | string %}
{% set autodetect = rg.node.gres_autodetect | string %}
{% set conf_server = rg.slurm.include_url | string %}
{% set bad = [] %}
{% if not node | regex_match('^([A-Za-z0-9][A-Za-z0-9._-]{0,63})$') %}{% do bad.append('remotegpu:node:name ' ~ node | json) %}{% endif %}
{% if autodetect not in ['off', 'nvml'] %}{% do bad.append('remotegpu:node:gres_autodetect ' ~ autodetect | json ~ ' (off or nvml)') %}{% endif %}
{% for gpu in rg.node.gpus %}
{% if gpu is not mapping or not (gpu.type | string) | regex_match('^([A-Za-z0-9][A-Za-z0-9_.-]{0,31})$')
      or not (gpu.count | string) | regex_match('^([0-9]{1,2})$') %}
{% do bad.append('remotegpu:node:gpus[' ~ loop.index0 ~ '] ' ~ gpu | json ~ ' (type: letters, digits, ._-; count: 0-99)') %}
{% endif %}
{% endfor %}
{% if not (rg.os.gpu_device_prefix | string) | regex_match('^((/[A-Za-z0-9._-]+)+)$') %}{% do bad.append('remotegpu:lookup:gpu_device_prefix ' ~ rg.os.gpu_device_prefix | json) %}{% endif %}
{% if conf_server and not conf_server | regex_match('^([A-Za-z0-9.-]+(:[0-9]{1,5})?)$') %}{% do bad.append('remotegpu:slurm:include_url ' ~ conf_server | json ~ ' (host:port)') %}{% endif %}

{{ scratch_note('remotegpu_slurmd_scratch') }}

{% if bad %}
remotegpu_slurmd_pillar:
  test.configurable_test_state:
    - changes: False
    - result: False
    - allow_test_mode_failure: True
    - comment: {{ ('Invalid pillar, nothing written: ' ~ bad | join('; ')) | json }}
{% else %}

{% if host_steps %}
remotegpu_slurmd_package:
  pkg.installed:
    - pkgs: {{ rg.os.slurmd_pkgs | json }}
    - refresh: False
{% else %}
{{ host_skip('remotegpu_slurmd_package', 'install ' ~ rg.os.slurmd_pkgs | join(', ')) }}
{% endif %}

remotegpu_slurm_conf_dir:
  file.directory:
    - name: {{ root }}{{ conf_dir }}
    - mode: '0755'
    - makedirs: True
    - require:
      - remotegpu_slurmd_package

{% for dir in [rg.os.spool_dir, rg.os.log_dir] %}
remotegpu_slurmd_dir_{{ loop.index }}:
  file.directory:
    - name: {{ root }}{{ dir }}
    - mode: '0755'
    - makedirs: True
{% endfor %}

remotegpu_gres_conf:
  file.managed:
    - name: {{ root }}{{ conf_dir }}/gres.conf
    - source: salt://remotegpu/templates/gres.conf.j2
    - template: jinja
    - mode: '0644'
    - context:
        node: {{ node | json }}
        gpus: {{ rg.node.gpus | json }}
        autodetect: {{ autodetect | json }}
        device_prefix: {{ rg.os.gpu_device_prefix | string | json }}
    - require:
      - remotegpu_slurm_conf_dir

remotegpu_cgroup_conf:
  file.managed:
    - name: {{ root }}{{ conf_dir }}/cgroup.conf
    - source: salt://remotegpu/templates/cgroup.conf.j2
    - template: jinja
    - mode: '0644'
    - context:
        cgroup: {{ rg.slurm.cgroup | json }}
    - require:
      - remotegpu_slurm_conf_dir

{% if not conf_server %}
remotegpu_slurm_conf:
  file.managed:
    - name: {{ root }}{{ conf_dir }}/slurm.conf
    - source: salt://remotegpu/templates/slurm.conf.j2
    - template: jinja
    - mode: '0644'
    - context:
        node: {{ node | json }}
        cluster: {{ rg.slurm.cluster | string | json }}
        controller: {{ rg.slurm.controller | string | json }}
        conf_dir: {{ conf_dir | json }}
    - require:
      - remotegpu_slurm_conf_dir
{% endif %}

remotegpu_slurmd_defaults:
  file.managed:
    - name: {{ root }}{{ rg.os.slurmd_defaults }}
    - source: salt://remotegpu/templates/slurmd.defaults.j2
    - template: jinja
    - mode: '0644'
    - makedirs: True
    - context:
        conf_server: {{ conf_server | json }}
        conf_dir: {{ conf_dir | json }}

{% set watched = ['remotegpu_gres_conf', 'remotegpu_cgroup_conf', 'remotegpu_slurmd_defaults']
                  + ([] if conf_server else ['remotegpu_slurm_conf']) %}
{% if host_steps %}
remotegpu_slurmd_service:
  service.running:
    - name: {{ rg.os.slurmd_service }}
    - enable: True
    - {{ 'watch' if host else 'require' }}:
{% for id in watched %}
      - file: {{ id }}
{% endfor %}
{% else %}
{{ host_skip('remotegpu_slurmd_service', 'start and enable ' ~ rg.os.slurmd_service ~ ' (restarted when its files change)') }}
{% endif %}
{% endif %}
