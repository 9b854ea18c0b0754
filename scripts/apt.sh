# Installs Debian packages the scripts need when they are missing.
# Source it: `source scripts/apt.sh`, then `apt_ensure PACKAGE...`.

# Installs whichever of the named packages are not installed (one apt-get update).
apt_ensure() {
  local missing=() package
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$package")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  echo "installing with apt: ${missing[*]}" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# What building the workspace needs beyond Rust and a C compiler: OpenSSL's
# headers for librdkafka's TLS and SASL/SCRAM support, found with pkg-config.
build_deps_ensure() {
  apt_ensure libssl-dev pkg-config
}

# Generates the locale NAME (e.g. de_DE.UTF-8) when the system lacks it:
# a test reads PostgreSQL's messages in another language.
locale_ensure() {
  local name="$1"
  local listed="${name%%.*}.utf8"
  locale -a 2>/dev/null | grep -qix "$listed" && return 0
  apt_ensure locales
  echo "generating locale $name" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo localedef -i "${name%%.*}" -f UTF-8 "$name"
}
