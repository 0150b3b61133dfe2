{#- remotegpu.exporter: the node's metrics exporter (remotegpu-node-exporter, pillar remotegpu:exporter: command,
    listen, port) as a systemd unit in <root>/etc/systemd/system, then enabled and running (restarted when the unit
    changes). Host-only beyond the unit file. -#}
{% from "remotegpu/map.jinja" import rg, root, host, host_steps with context %}
{% from "remotegpu/macros.jinja" import host_skip, scratch_note, parent_dir with context %}
{% set unit = 'remotegpu-node-exporter.service' %}
{% set exporter = rg.exporter %}
{% set bad = [] %}
{% if not (exporter.command | string) | regex_match('^((/[A-Za-z0-9._+-]+)+)$') or '/..' in exporter.command | string %}
{% do bad.append('remotegpu:exporter:command ' ~ exporter.command | json ~ ' (an absolute path, no arguments)') %}
{% endif %}
{% if not (exporter.listen | string) | regex_match('^([0-9A-Fa-f.:]+)$') %}
{% do bad.append('remotegpu:exporter:listen ' ~ exporter.listen | json ~ ' (an IP address)') %}
{% endif %}
{% if not (exporter.port | string) | regex_match('^([0-9]{1,5})$') or not 0 < exporter.port | int < 65536 %}
{% do bad.append('remotegpu:exporter:port ' ~ exporter.port | json ~ ' (1-65535)') %}
{% endif %}

{{ scratch_note('remotegpu_exporter_scratch') }}

{% if exporter.get('user') and not (exporter.user | string) | regex_match('^([a-z_][a-z0-9_-]{0,31})$') %}
{% do bad.append('remotegpu:exporter:user ' ~ exporter.user | json ~ ' (a user name, or empty)') %}
{% endif %}

{% if bad %}
remotegpu_exporter_pillar:
  test.configurable_test_state:
    - changes: False
    - result: False
    - allow_test_mode_failure: True
    - comment: {{ ('Invalid pillar, nothing written: ' ~ bad | join('; ')) | json }}
{% else %}

remotegpu_exporter_unit:
  file.managed:
    - name: {{ root }}{{ rg.os.unit_dir }}/{{ unit }}
    - source: salt://remotegpu/templates/exporter.service.j2
    - template: jinja
    - mode: '0644'
    - makedirs: True
    - context:
        command: {{ exporter.command | string | json }}
        listen: {{ exporter.listen | string | json }}
        port: {{ exporter.port | int }}
        user: {{ (exporter.get('user') or '') | string | json }}

{% if host_steps %}
{#- systemd reads a changed unit only after a daemon-reload; service.running then (re)starts it #}
remotegpu_exporter_daemon_reload:
  module.run:
    - service.systemctl_reload: []
    - onchanges:
      - file: remotegpu_exporter_unit

remotegpu_exporter_service:
  service.running:
    - name: {{ unit }}
    - enable: True
    - {{ 'watch' if host else 'require' }}:
      - file: remotegpu_exporter_unit
    - require:
      - remotegpu_exporter_daemon_reload
{% else %}
{{ host_skip('remotegpu_exporter_daemon_reload', 'systemctl daemon-reload when the unit changed') }}
{{ host_skip('remotegpu_exporter_service', 'enable and start ' ~ unit ~ ' (restarted when the unit changes)') }}
{% endif %}
{% endif %}
