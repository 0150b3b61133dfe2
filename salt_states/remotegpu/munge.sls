{#- remotegpu.munge: the cluster's munge key from pillar (remotegpu:munge:key_b64, base64) in <root>/etc/munge,
    mode 0400 (munge:munge on a real node), then munged. The key never appears in a state's output or in the
    rendered SLS: file.decode reads it from pillar itself (contents_pillar) and reports SHA-256 sums only. -#}
{% from "remotegpu/map.jinja" import rg, root, host, host_steps with context %}
{% from "remotegpu/macros.jinja" import host_skip, owner, scratch_note, parent_dir with context %}
{% set key = root ~ '/etc/munge/munge.key' %}
{{ scratch_note('remotegpu_munge_scratch') }}

{% if host_steps %}
remotegpu_munge_package:
  pkg.installed:
    - pkgs: {{ rg.os.munge_pkgs | json }}
    - refresh: False
{% else %}
{{ host_skip('remotegpu_munge_package', 'install ' ~ rg.os.munge_pkgs | join(', ')) }}
{% endif %}

{% if not host %}
{{ parent_dir('remotegpu_munge_etc', root ~ '/etc') }}
{% endif %}

remotegpu_munge_dir:
  file.directory:
    - name: {{ root }}/etc/munge
    - mode: '0700'
    {{- owner(rg.os.munge_user, rg.os.munge_user) }}
    - require:
      - remotegpu_munge_package
{%- if not host %}
      - remotegpu_munge_etc
{%- endif %}

{% if rg.munge.key_b64 %}
{#- made empty and 0400 first, so the key is never readable by others, even for a moment -#}
remotegpu_munge_key_mode:
  file.managed:
    - name: {{ key }}
    - mode: '0400'
    - replace: False
    - show_changes: False
    {{- owner(rg.os.munge_user, rg.os.munge_user) }}
    - require:
      - remotegpu_munge_dir

remotegpu_munge_key:
  file.decode:
    - name: {{ key }}
    - encoding_type: base64
    - checksum: sha256
    - contents_pillar: remotegpu:munge:key_b64
    - require:
      - remotegpu_munge_key_mode
{% else %}
remotegpu_munge_key:
  test.configurable_test_state:
    - name: {{ key }}
    - changes: False
    - result: False
    - allow_test_mode_failure: True
    - comment: 'No munge key in pillar (remotegpu:munge:key_b64): the gateway sends the cluster''s key; munged cannot start without it.'
{% endif %}

{% if host %}
remotegpu_munge_service:
  service.running:
    - name: {{ rg.os.munge_service }}
    - enable: True
    - watch:
      - file: remotegpu_munge_key
{% elif host_steps %}
remotegpu_munge_service:
  service.running:
    - name: {{ rg.os.munge_service }}
    - enable: True
    - require:
      - remotegpu_munge_key
{% else %}
{{ host_skip('remotegpu_munge_service', 'start and enable ' ~ rg.os.munge_service) }}
{% endif %}
