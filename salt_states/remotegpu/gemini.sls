{#- remotegpu.gemini: the /gemini layout jobs see (DESIGN §6: code, data-1..3, pretrain, pretrain2, pretrain3,
    output), the node-local dataset cache (one directory per user below it; a config file with its size limit that
    remotegpu-stage-in and the hourly remotegpu-cache-prune read), and the site's NFS or S3 (s3fs) mounts as fstab
    entries in <root>/etc/fstab plus, on a real node, mounted. -#}
{% from "remotegpu/map.jinja" import rg, root, host, host_steps, dry_run with context %}
{% from "remotegpu/macros.jinja" import host_skip, scratch_note, parent_dir with context %}
{% set gemini = rg.gemini.root.rstrip('/') %}
{% set cache_dir = rg.gemini.cache_dir.rstrip('/') %}
{% set conf = '/etc/remotegpu/cache.conf' %}
{% set prune = '/usr/local/sbin/remotegpu-cache-prune' %}
{% set fstab = root ~ '/etc/fstab' %}
{% set bad = [] %}
{% for path in [gemini, cache_dir] %}
{% if not path | regex_match('^((/[A-Za-z0-9._-]+)+)$') or '/..' in path %}{% do bad.append('path ' ~ path | json ~ ' (absolute, letters, digits, ._-)') %}{% endif %}
{% endfor %}
{% if not (rg.gemini.cache_max_gb | string) | regex_match('^([0-9]{1,7})$') %}{% do bad.append('remotegpu:gemini:cache_max_gb ' ~ rg.gemini.cache_max_gb | json ~ ' (whole GB)') %}{% endif %}
{% for mount in rg.gemini.mounts %}
{% if mount is not mapping or mount.kind not in ['nfs', 's3']
      or not (mount.target | string) | regex_match('^((/[A-Za-z0-9._-]+)+)$') or '/..' in mount.target | string
      or not (mount.source | string) | regex_match('^([A-Za-z0-9._#:/@-]+)$')
      or not (mount.get('options', 'defaults') | string) | regex_match('^([A-Za-z0-9._,=:/@-]+)$') %}
{% do bad.append('remotegpu:gemini:mounts[' ~ loop.index0 ~ '] ' ~ mount | json
                  ~ ' (kind nfs|s3, absolute target, source and options without spaces)') %}
{% endif %}
{% endfor %}

{{ scratch_note('remotegpu_gemini_scratch') }}

{% if bad %}
remotegpu_gemini_pillar:
  test.configurable_test_state:
    - changes: False
    - result: False
    - allow_test_mode_failure: True
    - comment: {{ ('Invalid pillar, nothing written: ' ~ bad | join('; ')) | json }}
{% else %}

remotegpu_gemini_root:
  file.directory:
    - name: {{ root }}{{ gemini }}
    - mode: '0755'
    - makedirs: True

{% for slot in ['code', 'data-1', 'data-2', 'data-3', 'pretrain', 'pretrain2', 'pretrain3', 'output'] %}
remotegpu_gemini_{{ slot | replace('-', '_') }}:
  file.directory:
    - name: {{ root }}{{ gemini }}/{{ slot }}
    - mode: '0755'
    - require:
      - remotegpu_gemini_root
{% endfor %}

remotegpu_gemini_readme:
  file.managed:
    - name: {{ root }}{{ gemini }}/README
    - source: salt://remotegpu/templates/gemini-README.j2
    - template: jinja
    - mode: '0444'
    - context:
        node: {{ rg.node.name | string | json }}
        cache_dir: {{ cache_dir | json }}
        mounts: {{ rg.gemini.mounts | json }}
    - require:
      - remotegpu_gemini_root

{#- 1777 like /tmp: each job's user makes (and alone can read) its own <uid> directory in it #}
{{ parent_dir('remotegpu_cache_parent', root ~ salt['file.dirname'](cache_dir)) }}

remotegpu_cache_dir:
  file.directory:
    - name: {{ root }}{{ cache_dir }}
    - mode: '1777'
    - require:
      - remotegpu_cache_parent

remotegpu_cache_conf:
  file.managed:
    - name: {{ root }}{{ conf }}
    - source: salt://remotegpu/templates/cache.conf.j2
    - template: jinja
    - mode: '0644'
    - makedirs: True
    - context:
        cache_dir: {{ cache_dir | json }}
        max_gb: {{ rg.gemini.cache_max_gb | int }}

remotegpu_cache_prune:
  file.managed:
    - name: {{ root }}{{ prune }}
    - source: salt://remotegpu/templates/cache-prune.sh.j2
    - template: jinja
    - mode: '0755'
    - makedirs: True
    - context:
        conf: {{ conf | json }}

remotegpu_cache_prune_cron:
  file.managed:
    - name: {{ root }}/etc/cron.d/remotegpu-cache-prune
    - source: salt://remotegpu/templates/cache-prune.cron.j2
    - template: jinja
    - mode: '0644'
    - makedirs: True
    - context:
        conf: {{ conf | json }}
        script: {{ prune | json }}
        max_gb: {{ rg.gemini.cache_max_gb | int }}

{% if rg.gemini.mounts %}
{% set kinds = rg.gemini.mounts | map(attribute='kind') | unique | list %}
{% set pkgs = (rg.os.nfs_pkgs if 'nfs' in kinds else []) + (rg.os.s3_pkgs if 's3' in kinds else []) %}
{% if host_steps %}
remotegpu_mount_packages:
  pkg.installed:
    - pkgs: {{ pkgs | json }}
    - refresh: False
{% else %}
{{ host_skip('remotegpu_mount_packages', 'install ' ~ pkgs | join(', ')) }}
{% endif %}

{#- fstab must exist before mount.fstab_present reads it (a real node's always does) #}
remotegpu_fstab:
  file.managed:
    - name: {{ fstab }}
    - replace: False
    - makedirs: True
    - mode: '0644'

{% for mount in rg.gemini.mounts %}
{% set target = mount.target.rstrip('/') %}
{% set options = mount.get('options', 'defaults') | string %}
{% if mount.kind == 'nfs' %}
{% set device, fstype = mount.source, 'nfs' %}
{% else %}
{#- s3fs: source is BUCKET or BUCKET:/PREFIX; endpoint, credentials file and the like go in options #}
{% set device, fstype = mount.source, 'fuse.s3fs' %}
{% endif %}
{% set key = 'remotegpu_mount_' ~ loop.index %}
{{ key }}_target:
  file.directory:
    - name: {{ root }}{{ target }}
    - makedirs: True

{% if dry_run and not salt['file.file_exists'](fstab) %}
{#- in a dry run a fresh root has no fstab yet for mount.fstab_present to read: say what it would write #}
{{ key }}_fstab:
  test.configurable_test_state:
    - name: {{ target }}
    - changes: True
    - result: True
    - comment: {{ (fstab ~ ' does not exist yet (remotegpu_fstab makes it): ' ~ target ~ ' entry would be written: '
                   ~ device ~ ' ' ~ target ~ ' ' ~ fstype ~ ' ' ~ options ~ ' 0 0') | json }}
{% else %}
{{ key }}_fstab:
  mount.fstab_present:
    - name: {{ device | json }}
    - fs_file: {{ target | json }}
    - fs_vfstype: {{ fstype }}
    - fs_mntops: {{ options | json }}
    - fs_freq: 0
    - fs_passno: 0
    - config: {{ fstab | json }}
    - mount: False
    - require:
      - remotegpu_fstab
      - {{ key }}_target
{% endif %}

{% if host_steps %}
{{ key }}_mounted:
  mount.mounted:
    - name: {{ target | json }}
    - device: {{ device | json }}
    - fstype: {{ fstype }}
    - opts: {{ options | json }}
    - persist: False
    - mkmnt: True
    - require:
      - remotegpu_mount_packages
      - {{ key }}_fstab
{% else %}
{{ host_skip(key ~ '_mounted', 'mount ' ~ device ~ ' on ' ~ target ~ ' (' ~ fstype ~ ')') }}
{% endif %}
{% endfor %}
{% endif %}
{% endif %}
