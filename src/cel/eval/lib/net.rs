//! The IP address and CIDR range library, as Kubernetes defines it for its
//! CEL expressions (and cel-go ships as its `network` extension).
//!
//! ```cel
//! cidr("10.0.0.0/8").containsIP(object.attributes.source.address.socket_address.address)
//! ip("10.0.0.7").isLoopback()
//! cidr("192.168.1.5/24").masked() == cidr("192.168.1.0/24")
//! ```
//!
//! `ip(s)` gives a `net.IP`, `cidr(s)` a `net.CIDR`: opaque values compared
//! with `==` and passed to the library's methods; `string(x)` writes them
//! back (an IPv6 address in its RFC 5952 canonical form). Parsing is strict:
//! an IPv4 octet with a leading zero, an IPv6 zone (`fe80::1%eth0`) and an
//! IPv4-mapped IPv6 address written with a dotted quad (`::ffff:1.2.3.4`)
//! are refused. An IPv4-mapped address written in hex (`::ffff:c0a8:1`) is
//! the IPv4 address it maps (`ip("::ffff:c0a8:1") == ip("192.168.0.1")`),
//! so that a policy cannot be sidestepped by spelling an IPv4 peer as IPv6.
//! A CIDR keeps the address as written (`cidr("10.1.2.3/8").ip()` is
//! `10.1.2.3`); `masked()` clears the host bits.
//!
//! No valid address or range is longer than [`MAX_TEXT`] bytes: a longer
//! string is refused before it is read, so that parsing costs at most a
//! small constant.

use crate::cel::eval::{Ctx, Error, Function, Object, Value};
use std::any::Any;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The type names of the library's values, as `type(x)` gives them and as
/// an expression writes them (`type(x) == net.IP`).
pub const IP_TYPE: &str = "net.IP";
pub const CIDR_TYPE: &str = "net.CIDR";
pub const TYPES: &[&str] = &[IP_TYPE, CIDR_TYPE];

/// Longer than any address or range the parsers accept (the longest,
/// `ffff:…:255.255.255.255/128`, has 49 bytes).
pub const MAX_TEXT: usize = 64;

pub const FUNCTIONS: &[Function] = &[
    Function::global("ip", 1, ip),
    Function::global("isIP", 1, is_ip),
    Function::global("ip.isCanonical", 1, is_canonical),
    Function::global("cidr", 1, cidr),
    Function::global("isCIDR", 1, is_cidr),
    Function::global("string", 1, to_string),
    Function::method("family", 0, family),
    Function::method("isUnspecified", 0, is_unspecified),
    Function::method("isLoopback", 0, is_loopback),
    Function::method("isLinkLocalMulticast", 0, is_link_local_multicast),
    Function::method("isLinkLocalUnicast", 0, is_link_local_unicast),
    Function::method("isGlobalUnicast", 0, is_global_unicast),
    Function::method("containsIP", 1, contains_ip),
    Function::method("containsCIDR", 1, contains_cidr),
    Function::method("ip", 0, cidr_ip),
    Function::method("masked", 0, masked),
    Function::method("prefixLength", 0, prefix_length),
];

/// The declarations the type checker reads.
pub const DECLS: &str = "
ip(string) -> net.IP
isIP(string) -> bool
ip.isCanonical(string) -> bool
string(net.IP) -> string
(net.IP).family() -> int
(net.IP).isUnspecified() -> bool
(net.IP).isLoopback() -> bool
(net.IP).isLinkLocalMulticast() -> bool
(net.IP).isLinkLocalUnicast() -> bool
(net.IP).isGlobalUnicast() -> bool
cidr(string) -> net.CIDR
isCIDR(string) -> bool
string(net.CIDR) -> string
(net.CIDR).containsIP(net.IP) -> bool
(net.CIDR).containsIP(string) -> bool
(net.CIDR).containsCIDR(net.CIDR) -> bool
(net.CIDR).containsCIDR(string) -> bool
(net.CIDR).ip() -> net.IP
(net.CIDR).masked() -> net.CIDR
(net.CIDR).prefixLength() -> int
";

/// The library's values have no fields: they are passed to its functions.
pub const OBJECTS: &[crate::cel::check::decls::ObjectDecl] = &[(IP_TYPE, &[]), (CIDR_TYPE, &[])];

/// An IP address (`net.IP`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Ip(pub IpAddr);

/// A CIDR range (`net.CIDR`): an address and a prefix length no longer
/// than the address.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub bits: u8,
}

impl fmt::Debug for Ip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ip({:?})", self.0.to_string())
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cidr({:?})", self.to_string())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.bits)
    }
}

impl Object for Ip {
    fn type_name(&self) -> &str {
        IP_TYPE
    }
    fn equals(&self, other: &dyn Object) -> bool {
        other.as_any().downcast_ref::<Ip>() == Some(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Object for Cidr {
    fn type_name(&self) -> &str {
        CIDR_TYPE
    }
    fn equals(&self, other: &dyn Object) -> bool {
        other.as_any().downcast_ref::<Cidr>() == Some(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Why a string is not an address or a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    Syntax,
    Zone,
    Mapped,
}

/// The text quoted in a message: what was given, cut short when long.
fn quoted(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return format!("'{s}'");
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("'{}…' ({} bytes)", &s[..end], s.len())
}

fn ip_error(s: &str, why: Refused) -> Error {
    Error::function(
        "ip",
        match why {
            Refused::Syntax => format!(
                "IP Address {} parse error during conversion from string",
                quoted(s)
            ),
            Refused::Zone => format!("IP Address {} with zone value is not allowed", quoted(s)),
            Refused::Mapped => format!(
                "IPv4-mapped IPv6 address {} is not allowed (write the IPv4 address)",
                quoted(s)
            ),
        },
    )
}

fn cidr_error(s: &str, why: Refused) -> Error {
    Error::function(
        "cidr",
        match why {
            Refused::Syntax => format!(
                "network address {} parse error during conversion from string",
                quoted(s)
            ),
            Refused::Zone => format!("CIDR {} with zone value is not allowed", quoted(s)),
            Refused::Mapped => format!(
                "IPv4-mapped IPv6 address {} is not allowed in a CIDR",
                quoted(s)
            ),
        },
    )
}

/// An address as the parsers read it, before the library's own rules.
fn parse_addr(s: &str) -> Result<IpAddr, Refused> {
    if let Some((addr, _zone)) = s.split_once('%') {
        return match addr.parse::<Ipv6Addr>() {
            Ok(_) => Err(Refused::Zone),
            Err(_) => Err(Refused::Syntax),
        };
    }
    // `std` refuses IPv4 octets with a leading zero, as Go's `netip` does.
    s.parse::<IpAddr>().map_err(|_| Refused::Syntax)
}

/// `ip(s)`: an IPv4 or IPv6 address, without a zone; an IPv4-mapped address
/// is refused when written with a dotted quad and read as the IPv4 address
/// when written in hex.
fn parse_ip(s: &str) -> Result<IpAddr, Refused> {
    if s.len() > MAX_TEXT {
        return Err(Refused::Syntax);
    }
    match parse_addr(s)? {
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(_) if s.contains('.') => Err(Refused::Mapped),
            Some(v4) => Ok(IpAddr::V4(v4)),
            None => Ok(IpAddr::V6(a)),
        },
        v4 => Ok(v4),
    }
}

/// `cidr(s)`: `address/bits`, bits in decimal without a leading zero and no
/// more than the address has; no zone, no IPv4-mapped address.
fn parse_cidr(s: &str) -> Result<Cidr, Refused> {
    if s.len() > MAX_TEXT {
        return Err(Refused::Syntax);
    }
    let (addr, bits) = s.rsplit_once('/').ok_or(Refused::Syntax)?;
    let addr = parse_addr(addr)?;
    if matches!(addr, IpAddr::V6(a) if a.to_ipv4_mapped().is_some()) {
        return Err(Refused::Mapped);
    }
    let decimal = !bits.is_empty()
        && bits.bytes().all(|b| b.is_ascii_digit())
        && (bits == "0" || !bits.starts_with('0'));
    if !decimal {
        return Err(Refused::Syntax);
    }
    let bits: u8 = bits.parse().map_err(|_| Refused::Syntax)?;
    if bits > width(addr) {
        return Err(Refused::Syntax);
    }
    Ok(Cidr { addr, bits })
}

fn width(a: IpAddr) -> u8 {
    match a {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `a` with all but its first `bits` bits cleared.
fn mask(a: IpAddr, bits: u8) -> IpAddr {
    match a {
        IpAddr::V4(v) => {
            let m = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v) & m))
        }
        IpAddr::V6(v) => {
            let m = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v) & m))
        }
    }
}

impl Cidr {
    fn contains(&self, a: IpAddr) -> bool {
        a.is_ipv4() == self.addr.is_ipv4() && mask(a, self.bits) == mask(self.addr, self.bits)
    }

    fn contains_cidr(&self, other: &Cidr) -> bool {
        self.bits <= other.bits && self.contains(other.addr)
    }
}

/// The string argument, charged by its length (parsing reads no more than
/// [`MAX_TEXT`] bytes of it).
fn text<'a>(ctx: &mut Ctx<'_>, v: &'a Value<'_>) -> Result<Option<&'a str>, Error> {
    match v {
        Value::String(s) => {
            ctx.charge_bytes(s.len().min(MAX_TEXT))?;
            Ok(Some(s.as_str()))
        }
        _ => Ok(None),
    }
}

fn ip<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let Some(s) = text(ctx, &args[0])? else {
        return Err(Error::no_overload("ip", args));
    };
    parse_ip(s)
        .map(|a| Value::object(Ip(a)))
        .map_err(|why| ip_error(s, why))
}

fn is_ip<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let Some(s) = text(ctx, &args[0])? else {
        return Err(Error::no_overload("isIP", args));
    };
    Ok(Value::Bool(parse_ip(s).is_ok()))
}

fn is_canonical<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let Some(s) = text(ctx, &args[0])? else {
        return Err(Error::no_overload("ip.isCanonical", args));
    };
    let a = parse_ip(s).map_err(|why| ip_error(s, why))?;
    Ok(Value::Bool(a.to_string() == s))
}

fn cidr<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let Some(s) = text(ctx, &args[0])? else {
        return Err(Error::no_overload("cidr", args));
    };
    parse_cidr(s)
        .map(Value::object)
        .map_err(|why| cidr_error(s, why))
}

fn is_cidr<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let Some(s) = text(ctx, &args[0])? else {
        return Err(Error::no_overload("isCIDR", args));
    };
    Ok(Value::Bool(parse_cidr(s).is_ok()))
}

/// `string(ip)` and `string(cidr)`; other arguments are the standard
/// library's.
fn to_string<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    if let Some(Ip(a)) = args[0].downcast::<Ip>() {
        return Ok(Value::string(a.to_string()));
    }
    if let Some(c) = args[0].downcast::<Cidr>() {
        return Ok(Value::string(c.to_string()));
    }
    Err(Error::no_overload("string", args))
}

/// The address a method is called on.
fn receiver_ip(name: &str, args: &[Value<'_>]) -> Result<IpAddr, Error> {
    match args.first().and_then(Value::downcast::<Ip>) {
        Some(Ip(a)) => Ok(*a),
        None => Err(Error::no_overload(name, args)),
    }
}

/// The range a method is called on.
fn receiver_cidr(name: &str, args: &[Value<'_>]) -> Result<Cidr, Error> {
    match args.first().and_then(Value::downcast::<Cidr>) {
        Some(c) => Ok(*c),
        None => Err(Error::no_overload(name, args)),
    }
}

fn family<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let a = receiver_ip("family", args)?;
    Ok(Value::Int(if a.is_ipv4() { 4 } else { 6 }))
}

fn is_unspecified<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    Ok(Value::Bool(
        receiver_ip("isUnspecified", args)?.is_unspecified(),
    ))
}

fn is_loopback<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    Ok(Value::Bool(receiver_ip("isLoopback", args)?.is_loopback()))
}

/// 224.0.0.0/24, ff02::/16 (any flags: `ffX2::/16`).
fn link_local_multicast(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => v.octets()[..3] == [224, 0, 0],
        IpAddr::V6(v) => v.segments()[0] & 0xff0f == 0xff02,
    }
}

/// 169.254.0.0/16, fe80::/10.
fn link_local_unicast(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => v.is_link_local(),
        IpAddr::V6(v) => v.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// Anything but the unspecified, loopback, multicast, link-local unicast
/// and (IPv4) broadcast addresses; private ranges are global unicast.
fn global_unicast(a: IpAddr) -> bool {
    let special = match a {
        IpAddr::V4(v) => v.is_broadcast(),
        IpAddr::V6(_) => false,
    };
    !(special || a.is_unspecified() || a.is_loopback() || a.is_multicast() || link_local_unicast(a))
}

fn is_link_local_multicast<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    Ok(Value::Bool(link_local_multicast(receiver_ip(
        "isLinkLocalMulticast",
        args,
    )?)))
}

fn is_link_local_unicast<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    Ok(Value::Bool(link_local_unicast(receiver_ip(
        "isLinkLocalUnicast",
        args,
    )?)))
}

fn is_global_unicast<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    Ok(Value::Bool(global_unicast(receiver_ip(
        "isGlobalUnicast",
        args,
    )?)))
}

fn contains_ip<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let c = receiver_cidr("containsIP", args)?;
    let a = match args.get(1) {
        Some(v) => match v.downcast::<Ip>() {
            Some(Ip(a)) => *a,
            None => match text(ctx, v)? {
                Some(s) => parse_ip(s).map_err(|why| ip_error(s, why))?,
                None => return Err(Error::no_overload("containsIP", args)),
            },
        },
        None => return Err(Error::no_overload("containsIP", args)),
    };
    Ok(Value::Bool(c.contains(a)))
}

fn contains_cidr<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let c = receiver_cidr("containsCIDR", args)?;
    let other = match args.get(1) {
        Some(v) => match v.downcast::<Cidr>() {
            Some(o) => *o,
            None => match text(ctx, v)? {
                Some(s) => parse_cidr(s).map_err(|why| cidr_error(s, why))?,
                None => return Err(Error::no_overload("containsCIDR", args)),
            },
        },
        None => return Err(Error::no_overload("containsCIDR", args)),
    };
    Ok(Value::Bool(c.contains_cidr(&other)))
}

fn cidr_ip<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    Ok(Value::object(Ip(receiver_cidr("ip", args)?.addr)))
}

fn masked<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let c = receiver_cidr("masked", args)?;
    Ok(Value::object(Cidr {
        addr: mask(c.addr, c.bits),
        bits: c.bits,
    }))
}

fn prefix_length<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    Ok(Value::Int(i64::from(
        receiver_cidr("prefixLength", args)?.bits,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cel::eval::lib::call as call_in;
    use crate::cel::eval::lib::test_global as global;
    use crate::cel::eval::lib::test_method as method;
    use crate::cel::eval::value::equals;
    use crate::cel::eval::{ErrorKind, Meter};

    fn ip(s: &str) -> Value<'static> {
        global("ip", &[Value::string(s)]).unwrap_or_else(|e| panic!("ip({s:?}): {e}"))
    }

    fn cidr(s: &str) -> Value<'static> {
        global("cidr", &[Value::string(s)]).unwrap_or_else(|e| panic!("cidr({s:?}): {e}"))
    }

    fn string_of(v: Value<'_>) -> String {
        match global("string", &[v]) {
            Ok(Value::String(s)) => s.to_string(),
            other => panic!("string(): {other:?}"),
        }
    }

    fn truth(v: Result<Value<'_>, Error>) -> bool {
        match v {
            Ok(Value::Bool(b)) => b,
            other => panic!("not a bool: {other:?}"),
        }
    }

    fn is(name: &str, addr: &str) -> bool {
        truth(method(name, &[ip(addr)]))
    }

    #[test]
    fn addresses_parse_strictly() {
        for good in [
            "192.168.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::",
            "::1",
            "2001:db8::68",
            "2001:DB8:0:0:0:0:0:1",
            "::1.2.3.4",
        ] {
            assert!(truth(global("isIP", &[Value::string(good)])), "{good}");
        }
        for bad in [
            "",
            "192.168.0.1.0",
            "192.168.0",
            "192.168.00.1",
            "01.2.3.4",
            "256.1.1.1",
            "2001:db8:::68",
            "fe80::1%en0",
            "::ffff:192.168.0.1",
            "1.2.3.4/32",
            " 1.2.3.4",
            "12345::",
        ] {
            assert!(!truth(global("isIP", &[Value::string(bad)])), "{bad}");
            let e = global("ip", &[Value::string(bad)]).unwrap_err();
            assert_eq!(e.kind, ErrorKind::FunctionError, "{bad}");
        }
        let e = global("ip", &[Value::string("fe80::1%en0")]).unwrap_err();
        assert!(e.message.contains("zone"), "{}", e.message);
        let e = global("ip", &[Value::string("::ffff:192.168.0.1")]).unwrap_err();
        assert!(e.message.contains("IPv4-mapped"), "{}", e.message);
        // Not a string: another library's, or no overload at all.
        let e = global("isIP", &[cidr("10.0.0.0/8")]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
    }

    #[test]
    fn addresses_print_canonically() {
        assert_eq!(string_of(ip("192.168.0.1")), "192.168.0.1");
        assert_eq!(string_of(ip("2001:DB8:0:0:0:0:0:68")), "2001:db8::68");
        assert_eq!(string_of(ip("1:0:0:2:0:0:3:4")), "1::2:0:0:3:4");
        assert_eq!(string_of(ip("1:0:2:3:4:5:6:7")), "1:0:2:3:4:5:6:7");
        assert_eq!(string_of(ip("::1.2.3.4")), "::102:304");
        assert!(truth(global(
            "ip.isCanonical",
            &[Value::string("2001:db8::1")]
        )));
        assert!(!truth(global(
            "ip.isCanonical",
            &[Value::string("2001:DB8::1")]
        )));
        assert!(!truth(global(
            "ip.isCanonical",
            &[Value::string("2001:db8:0:0:0:0:0:1")]
        )));
        assert!(global("ip.isCanonical", &[Value::string("1.2.3")]).is_err());
    }

    #[test]
    fn a_hex_mapped_address_is_the_ipv4_address() {
        let mapped = ip("::ffff:c0a8:1");
        assert!(equals(&mapped, &ip("192.168.0.1")));
        assert!(!equals(&mapped, &ip("192.168.10.1")));
        assert_eq!(string_of(mapped.clone()), "192.168.0.1");
        assert!(truth(method(
            "containsIP",
            &[cidr("192.168.0.0/24"), mapped]
        )));
        assert!(!equals(&ip("::"), &ip("::ffff")));
        // A range cannot be written with a mapped address at all.
        assert!(!truth(global("isCIDR", &[Value::string("::ffff:0:0/96")])));
    }

    #[test]
    fn address_properties() {
        let fam = |a: &str| method("family", &[ip(a)]).unwrap();
        assert!(equals(&fam("10.0.0.1"), &Value::Int(4)));
        assert!(equals(&fam("::1"), &Value::Int(6)));
        assert!(is("isUnspecified", "0.0.0.0") && is("isUnspecified", "::"));
        assert!(!is("isUnspecified", "127.0.0.1"));
        assert!(is("isLoopback", "127.0.0.1") && is("isLoopback", "127.9.9.9"));
        assert!(is("isLoopback", "::1") && !is("isLoopback", "1.2.3.4"));
        assert!(is("isGlobalUnicast", "192.168.0.1") && is("isGlobalUnicast", "2001:db8::abcd"));
        for not in [
            "255.255.255.255",
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.1",
            "169.254.1.1",
            "ff00::1",
            "fe80::1",
            "::",
            "::1",
        ] {
            assert!(!is("isGlobalUnicast", not), "{not}");
        }
        assert!(is("isLinkLocalMulticast", "224.0.0.1") && is("isLinkLocalMulticast", "ff02::1"));
        assert!(is("isLinkLocalMulticast", "ff12::1"));
        assert!(!is("isLinkLocalMulticast", "224.0.1.1") && !is("isLinkLocalMulticast", "fd00::1"));
        assert!(is("isLinkLocalUnicast", "169.254.169.254") && is("isLinkLocalUnicast", "fe80::1"));
        assert!(is("isLinkLocalUnicast", "febf::1"));
        assert!(!is("isLinkLocalUnicast", "192.168.0.1") && !is("isLinkLocalUnicast", "fd80::1"));
        // A method of another type's value is not this library's.
        let e = method("isLoopback", &[cidr("10.0.0.0/8")]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
    }

    #[test]
    fn ranges_parse_strictly() {
        for good in [
            "10.0.0.0/8",
            "0.0.0.0/0",
            "1.2.3.4/32",
            "2001:db8::/32",
            "::/0",
            "::1/128",
        ] {
            assert!(truth(global("isCIDR", &[Value::string(good)])), "{good}");
            assert_eq!(string_of(cidr(good)), good);
        }
        for bad in [
            "192.168.0.0/",
            "192.168.0.0",
            "192.168.0.0/33",
            "::/129",
            "10.0.0.0/08",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
            "fe80::1%en0/24",
            "::ffff:192.168.0.1/24",
            "/8",
        ] {
            assert!(!truth(global("isCIDR", &[Value::string(bad)])), "{bad}");
            assert!(global("cidr", &[Value::string(bad)]).is_err(), "{bad}");
        }
        let e = global("cidr", &[Value::string("fe80::1%en0/24")]).unwrap_err();
        assert!(e.message.contains("zone"), "{}", e.message);
    }

    #[test]
    fn ranges_contain_addresses_and_ranges() {
        let c = cidr("192.168.0.0/24");
        let has = |x: Value<'static>| truth(method("containsIP", &[c.clone(), x]));
        assert!(has(ip("192.168.0.1")) && has(Value::string("192.168.0.255")));
        assert!(!has(ip("192.168.1.1")) && !has(ip("2001:db8::1")));
        assert!(method("containsIP", &[c.clone(), Value::string("nope")]).is_err());
        assert!(truth(method(
            "containsIP",
            &[cidr("0.0.0.0/0"), ip("8.8.8.8")]
        )));
        assert!(!truth(method(
            "containsIP",
            &[cidr("0.0.0.0/0"), ip("::1")]
        )));
        assert!(truth(method("containsIP", &[cidr("::/0"), ip("::1")])));
        assert!(truth(method(
            "containsIP",
            &[cidr("2001:db8::/32"), ip("2001:db8:ffff::1")]
        )));
        let sub = |x: Value<'static>| truth(method("containsCIDR", &[c.clone(), x]));
        assert!(sub(cidr("192.168.0.0/25")) && sub(cidr("192.168.0.1/32")));
        assert!(sub(cidr("192.168.0.0/24")) && sub(Value::string("192.168.0.128/25")));
        assert!(!sub(cidr("192.168.0.0/23")) && !sub(cidr("192.168.1.0/25")));
        assert!(!sub(cidr("::/0")));
        // The receiver's host bits do not matter to containment.
        assert!(truth(method(
            "containsIP",
            &[cidr("10.1.2.3/8"), ip("10.200.0.1")]
        )));
        assert!(method("containsCIDR", &[c.clone(), Value::Int(1)]).is_err());
    }

    #[test]
    fn range_parts() {
        let c = cidr("192.168.0.1/24");
        assert!(equals(
            &method("ip", std::slice::from_ref(&c)).unwrap(),
            &ip("192.168.0.1")
        ));
        assert!(equals(
            &method("masked", std::slice::from_ref(&c)).unwrap(),
            &cidr("192.168.0.0/24")
        ));
        assert!(equals(
            &method("prefixLength", std::slice::from_ref(&c)).unwrap(),
            &Value::Int(24)
        ));
        assert!(!equals(&c, &cidr("192.168.0.0/24")));
        assert!(equals(&c, &cidr("192.168.0.1/24")));
        assert!(!equals(&cidr("2001:db8::/32"), &cidr("10.0.0.1/32")));
        let m6 = method("masked", &[cidr("2001:db8:1:2::5/33")]).unwrap();
        assert_eq!(string_of(m6), "2001:db8::/33");
        let m0 = method("masked", &[cidr("10.1.2.3/0")]).unwrap();
        assert_eq!(string_of(m0), "0.0.0.0/0");
        // `ip()` called on an address is no overload (and `ip(x)` of one neither).
        assert!(method("ip", &[ip("1.2.3.4")]).is_err());
        assert_eq!(
            global("ip", &[ip("1.2.3.4")]).unwrap_err().kind,
            ErrorKind::NoSuchOverload
        );
    }

    #[test]
    fn string_of_other_values_is_the_standard_library() {
        assert_eq!(string_of(Value::Int(7)), "7");
    }

    #[test]
    fn long_strings_cost_a_constant_and_are_refused() {
        let long = "1".repeat(1_000_000);
        let mut small = Ctx::new(None, Meter::new(100));
        for name in ["ip", "isIP", "cidr", "isCIDR"] {
            let r = call_in(&mut small, name, false, &[Value::string(long.as_str())]);
            assert!(
                !matches!(&r, Err(e) if e.kind == ErrorKind::CostExceeded),
                "{name}"
            );
        }
        assert!(small.meter.used() <= 4 * 8, "{}", small.meter.used());
        let e = global("ip", &[Value::string(long.as_str())]).unwrap_err();
        assert!(e.message.len() < 200, "{}", e.message.len());
        // The meter still stops a request whose budget is spent.
        let mut spent = Ctx::new(None, Meter::new(0));
        let e = call_in(&mut spent, "ip", false, &[Value::str("10.0.0.1")]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::CostExceeded);
    }
}
