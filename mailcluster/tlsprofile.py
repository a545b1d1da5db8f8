"""The one TLS profile every service uses: Mozilla's "intermediate" configuration (v5.7).

TLS 1.2 and 1.3 only; forward-secret AEAD ciphers for TLS 1.2. It admits every client a
university still sees (Thunderbird, Outlook 2016+, iOS/Android mail, phones since 2014).
"""

MIN_PROTOCOL = "TLSv1.2"
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    ]
)

# The server's order wins. Every cipher listed is strong, so Mozilla lets clients choose;
# but an audit (testssl.sh, tests/e2e/test_tls_audit.py) rates "no server order" as a
# finding, and a fixed order (ECDHE, AES-GCM first) costs no client anything.
PREFER_SERVER_CIPHERS = True

# The same profile as a GnuTLS priority string (Debian's and Ubuntu's Exim use GnuTLS):
# TLS 1.2/1.3, AEAD ciphers, forward-secret key exchange only.
GNUTLS_PRIORITY = ":".join(
    [
        "NORMAL",
        "-VERS-ALL",
        "+VERS-TLS1.3",
        "+VERS-TLS1.2",
        "-CIPHER-ALL",
        "+AES-128-GCM",
        "+AES-256-GCM",
        "+CHACHA20-POLY1305",
        "-MAC-ALL",
        "+AEAD",
        "-KX-ALL",
        "+ECDHE-ECDSA",
        "+ECDHE-RSA",
        "+DHE-RSA",
        "%SERVER_PRECEDENCE",
    ]
)

# Where every service finds the site's certificate on a host.
TLS_DIR = "/etc/mailcluster/tls"
CERT = f"{TLS_DIR}/fullchain.pem"
KEY = f"{TLS_DIR}/privkey.pem"
CA = f"{TLS_DIR}/ca.pem"
# Exim's key and chain in one file (mail nodes): Exim 4.93 reads its certificate and key
# afresh for each STARTTLS, so with two files a rotation (new key, new certificate, two
# writes) had a moment with a mismatched pair: clients got "454 TLS currently
# unavailable". One file replaced by rename has no such moment.
EXIM_PEM = f"{TLS_DIR}/exim.pem"
# update-ca-certificates adds *.crt from here to the system store below.
SYSTEM_CA = "/usr/local/share/ca-certificates/mailcluster-site-ca.crt"
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
