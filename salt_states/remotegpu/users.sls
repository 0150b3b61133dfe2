{#- remotegpu.users: the POSIX groups and users the gateway's users run as on this node (pillar remotegpu:groups,
    remotegpu:users: name, uid/gid when known, supplementary groups). Host-only: with a scratch root they are only
    shown in a dry run (test=True) and skipped in a real run. Users are never removed here. -#}
{% from "remotegpu/map.jinja" import rg, root, host_steps with context %}
{% from "remotegpu/macros.jinja" import host_skip, scratch_note, parent_dir with context %}
{% set name_re = '^([a-z_][a-z0-9_-]{0,31})$' %}
{% set bad = [] %}
{% for group in rg.groups %}
{% if group is not mapping or not (group.name | string) | regex_match(name_re)
      or (group.get('gid') is not none and not (group.gid | string) | regex_match('^([0-9]{1,10})$')) %}
{% do bad.append('remotegpu:groups[' ~ loop.index0 ~ '] ' ~ group | json) %}
{% endif %}
{% endfor %}
{% for user in rg.users %}
{% if user is not mapping or not (user.name | string) | regex_match(name_re)
      or (user.get('uid') is not none and not (user.uid | string) | regex_match('^([0-9]{1,10})$'))
      or (user.get('gid') is not none and not (user.gid | string) | regex_match('^([0-9]{1,10})$'))
      or user.get('groups', []) is string or user.get('groups', []) is not iterable %}
{% do bad.append('remotegpu:users[' ~ loop.index0 ~ '] ' ~ user | json) %}
{% else %}
{% for name in user.get('groups', []) %}
{% if not (name | string) | regex_match(name_re) %}{% do bad.append('remotegpu:users[' ~ loop.index0 ~ '] group ' ~ name | json) %}{% endif %}
{% endfor %}
{% endif %}
{% endfor %}

{{ scratch_note('remotegpu_users_scratch') }}

{% if bad %}
remotegpu_users_pillar:
  test.configurable_test_state:
    - changes: False
    - result: False
    - allow_test_mode_failure: True
    - comment: {{ ('Invalid pillar, nothing touched (user and group names: a-z 0-9 _ -; ids: numbers): ' ~ bad | join('; ')) | json }}
{% elif not rg.groups and not rg.users %}
remotegpu_users_none:
  test.show_notification:
    - text: 'No users or groups in pillar (remotegpu:users, remotegpu:groups): nothing to do.'
{% else %}

{% for group in rg.groups %}
{% if host_steps %}
remotegpu_group_{{ group.name }}:
  group.present:
    - name: {{ group.name }}
{% if group.get('gid') is not none %}
    - gid: {{ group.gid | int }}
{% endif %}
{% else %}
{{ host_skip('remotegpu_group_' ~ group.name, 'add group ' ~ group.name ~ (' (gid ' ~ group.gid ~ ')' if group.get('gid') is not none else '')) }}
{% endif %}
{% endfor %}

{% set pillar_gids = rg.groups | selectattr('gid', 'defined') | map(attribute='gid') | map('int') | list %}
{% for user in rg.users %}
{% set personal = user.get('gid') is not none and (user.gid | int) not in pillar_gids %}
{% if host_steps %}
{% if personal %}
{#- the user's own group, by the gid the gateway gave #}
remotegpu_usergroup_{{ user.name }}:
  group.present:
    - name: {{ user.name }}
    - gid: {{ user.gid | int }}
{% endif %}
remotegpu_user_{{ user.name }}:
  user.present:
    - name: {{ user.name }}
{% if user.get('uid') is not none %}
    - uid: {{ user.uid | int }}
{% endif %}
{% if user.get('gid') is not none %}
    - gid: {{ user.gid | int }}
{% elif user.get('groups') %}
    - usergroup: True
{% endif %}
    - shell: {{ rg.os.shell }}
    - createhome: True
{% if user.get('groups') %}
    - groups: {{ user.groups | json }}
    - remove_groups: False
{% endif %}
{% set own = rg.groups | map(attribute='name') | select('in', user.get('groups', [])) | list %}
{% if own or personal %}
    - require:
{% if personal %}
      - remotegpu_usergroup_{{ user.name }}
{% endif %}
{% for name in own %}
      - remotegpu_group_{{ name }}
{% endfor %}
{% endif %}
{% else %}
{{ host_skip('remotegpu_user_' ~ user.name, 'add user ' ~ user.name ~ (' (uid ' ~ user.uid ~ ')' if user.get('uid') is not none else '')
               ~ (', its own group gid ' ~ user.gid if personal else '')
               ~ (', groups ' ~ user.groups | join(',') if user.get('groups') else '')) }}
{% endif %}
{% endfor %}
{% endif %}
