# mailctl status: what one host says of itself (mailcluster/status.py reads the lines).
# Run as root with: sh -s -- MAIL(0|1) FQDN UNIT...
# Each part goes on when another fails: a stopped service must not hide the queue.
mail=$1 fqdn=$2
shift 2
for u in "$@"; do
  if [ "$u" = php-fpm ]; then
    u=$(systemctl list-unit-files --no-legend 'php*-fpm.service' 2>/dev/null \
      | awk 'NR==1{print $1}')
    [ -n "$u" ] || u=php-fpm
  fi
  echo "unit ${u%.service} $(systemctl is-active "$u" 2>/dev/null || true)"
done
chronyc -n tracking 2>/dev/null | sed -n 's/^Leap status *: */chrony /p'
if [ "$mail" = 1 ]; then
  [ "$(mailcluster-fence status 2>/dev/null)" = fenced ] && echo "fenced"
  echo "imap_sessions $(doveadm who -1 2>/dev/null | tail -n +2 | grep -c . || true)"
  echo "queue $(exim -bpc 2>/dev/null || echo '?')"
  exim -bp 2>/dev/null | awk '
    /^ *[0-9]+[smhdw] / { print "age", $1 }
    /\*\*\* frozen \*\*\*/ { print "frozen_one" }'
  # The backend map: each user's backend as this node's passdb has it (its own users
  # under its own name, as the other nodes name it), hashed here: no password hash or
  # secret leaves the host.
  f=/etc/dovecot/mailcluster/passdb
  if [ -r "$f" ]; then
    id=$(awk -F: -v me="$fqdn" '
      !/^#/ && NF > 1 {
        b = me
        if (match($0, / host=[^ ]+/)) b = substr($0, RSTART + 6, RLENGTH - 6)
        print $1, b
      }' "$f" | LC_ALL=C sort | sha256sum | cut -c1-16)
    echo "map $id"
  fi
fi
jails=$(fail2ban-client status 2>/dev/null | sed -n 's/.*Jail list:[[:space:]]*//p' | tr ',' ' ')
for j in $jails; do
  banned=$(fail2ban-client status "$j" 2>/dev/null | sed -n 's/.*Currently banned:[[:space:]]*//p')
  echo "bans $j $banned"
done
echo "end"
