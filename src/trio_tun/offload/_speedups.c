/*
 * Optional compiled versions of the hot paths of trio_tun.offload.
 *
 * Every function here has a pure-Python reference (checksum.py, gso.py,
 * gro.py) and must return byte-identical results and raise MalformedPacket
 * for exactly the inputs the reference rejects; the test suite compares the
 * two.  Everything runs with the GIL held: the work per call is a few
 * microseconds, far less than the cost of dropping and retaking the GIL, and
 * holding it keeps the buffers we read from stable.
 *
 * All packet bytes are untrusted.  Every offset is checked against the
 * buffer length before it is dereferenced; lengths are Py_ssize_t and the
 * header fields are at most 16 bits, so none of the sums can overflow.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

/* Strong reference to trio_tun.offload.errors.MalformedPacket. */
static PyObject *MalformedPacket = NULL;

#define M16 0xFFFFu

#define VIRTIO_NET_HDR_LEN 10
#define NEEDS_CSUM 1
#define DATA_VALID 2
#define GSO_NONE 0
#define GSO_TCPV4 1
#define GSO_UDP 3
#define GSO_TCPV6 4
#define GSO_UDP_L4 5
#define GSO_ECN 0x80

#define PROTO_TCP 6
#define PROTO_UDP 17
#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_CWR 0x80

/* gro.py's classification of a packet */
#define KIND_OTHER 0
#define KIND_BARRIER 1
#define KIND_SOLO 2
#define KIND_TCP 3
#define KIND_UDP 4

/* ------------------------------------------------------------------ */
/* Internet checksum                                                   */
/* ------------------------------------------------------------------ */

/* Fold to 16 bits with end-around carry.  A non-zero input never folds to 0,
 * which is the convention the Python reference uses ((n - 1) % 0xFFFF + 1). */
static inline uint32_t
fold64(uint64_t s)
{
    s = (s & 0xFFFFFFFFu) + (s >> 32);
    s = (s & 0xFFFFFFFFu) + (s >> 32);
    s = (s & 0xFFFFu) + (s >> 16);
    s = (s & 0xFFFFu) + (s >> 16);
    s = (s & 0xFFFFu) + (s >> 16);
    return (uint32_t)s;
}

static inline uint64_t
add_carry(uint64_t acc, uint64_t v)
{
    acc += v;
    return acc + (acc < v);
}

/* Folded ones'-complement sum of big-endian 16-bit words, the last odd byte
 * padded with zero.  0 only when every byte is 0.
 *
 * The sum is order-independent modulo 0xFFFF, so we add native 64-bit words
 * (the end-around carry keeps it exact modulo 2**64 - 1, a multiple of
 * 0xFFFF) and byte-swap the folded result on little-endian machines, as
 * RFC 1071 section 2(B) describes. */
static uint32_t
be_sum(const uint8_t *p, Py_ssize_t len)
{
    uint64_t acc = 0, w0, w1, w2, w3;
    uint32_t f;

    while (len >= 32) {
        memcpy(&w0, p, 8);
        memcpy(&w1, p + 8, 8);
        memcpy(&w2, p + 16, 8);
        memcpy(&w3, p + 24, 8);
        acc = add_carry(acc, w0);
        acc = add_carry(acc, w1);
        acc = add_carry(acc, w2);
        acc = add_carry(acc, w3);
        p += 32;
        len -= 32;
    }
    while (len >= 8) {
        memcpy(&w0, p, 8);
        acc = add_carry(acc, w0);
        p += 8;
        len -= 8;
    }
    if (len > 0) {
        /* Zero padding after the data keeps every word where it was. */
        uint8_t tail[8] = {0};
        memcpy(tail, p, (size_t)len);
        memcpy(&w0, tail, 8);
        acc = add_carry(acc, w0);
    }
    f = fold64(acc);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return f;
#else
    return ((f & 0xFFu) << 8) | (f >> 8);
#endif
}

static inline uint32_t
rd16(const uint8_t *p)
{
    return ((uint32_t)p[0] << 8) | p[1];
}

static inline uint32_t
rd32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void
wr16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void
wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* ------------------------------------------------------------------ */
/* Argument helpers                                                    */
/* ------------------------------------------------------------------ */

/* Get a contiguous byte view of obj.  Anything bytes() accepts but that is not
 * a simple buffer (a non-contiguous memoryview, ...) is copied first, which is
 * what the Python reference does by calling bytes() on it.  On success the
 * caller must release(view, tmp). */
static int
get_bytes(PyObject *obj, Py_buffer *view, PyObject **tmp)
{
    *tmp = NULL;
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) == 0) {
        return 0;
    }
    if (!PyErr_ExceptionMatches(PyExc_BufferError) &&
        !PyErr_ExceptionMatches(PyExc_TypeError)) {
        return -1;
    }
    PyErr_Clear();
    *tmp = PyBytes_FromObject(obj);
    if (*tmp == NULL) {
        return -1;
    }
    if (PyObject_GetBuffer(*tmp, view, PyBUF_SIMPLE) != 0) {
        Py_CLEAR(*tmp);
        return -1;
    }
    return 0;
}

static void
release(Py_buffer *view, PyObject *tmp)
{
    PyBuffer_Release(view);
    Py_XDECREF(tmp);
}

static PyObject *
malformed(const char *msg)
{
    PyErr_SetString(MalformedPacket, msg);
    return NULL;
}

/* An int in [0, max] or -1 with an exception set.  Out of range (including
 * values too big for a C long long) raises `exc`. */
static long long
int_in_range(PyObject *obj, long long max, PyObject *exc, const char *what)
{
    int overflow = 0;
    long long v;

    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int", what);
        return -1;
    }
    v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow || v < 0 || v > max) {
        PyErr_Format(exc, "%s out of range", what);
        return -1;
    }
    return v;
}

/* ------------------------------------------------------------------ */
/* ones_complement_sum / checksum                                      */
/* ------------------------------------------------------------------ */

static int
sum_args(PyObject *args, PyObject *kwargs, const char *fmt, uint32_t *out)
{
    static char *kwlist[] = {"data", "initial", NULL};
    PyObject *data, *initial_obj = NULL, *tmp;
    Py_buffer view;
    long long initial = 0;
    uint32_t s;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, fmt, kwlist, &data, &initial_obj)) {
        return -1;
    }
    if (initial_obj != NULL) {
        initial = int_in_range(initial_obj, 0xFFFFFFFFLL, PyExc_ValueError, "initial");
        if (initial < 0) {
            return -1;
        }
    }
    if (get_bytes(data, &view, &tmp) < 0) {
        return -1;
    }
    s = be_sum((const uint8_t *)view.buf, view.len);
    release(&view, tmp);
    *out = fold64((uint64_t)s + (uint64_t)initial);
    return 0;
}

static PyObject *
py_ones_complement_sum(PyObject *self, PyObject *args, PyObject *kwargs)
{
    uint32_t s;
    if (sum_args(args, kwargs, "O|O:ones_complement_sum", &s) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLong(s);
}

static PyObject *
py_checksum(PyObject *self, PyObject *args, PyObject *kwargs)
{
    uint32_t s;
    if (sum_args(args, kwargs, "O|O:checksum", &s) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLong(~s & M16);
}

/* ------------------------------------------------------------------ */
/* split                                                               */
/* ------------------------------------------------------------------ */

/* virtio._validate_fields */
static int
validate_fields(unsigned flags, unsigned gso_type, unsigned hdr_len, unsigned gso_size,
                unsigned csum_start, unsigned csum_offset, Py_ssize_t n)
{
    unsigned base = gso_type & ~(unsigned)GSO_ECN;

    if (flags & ~(unsigned)(NEEDS_CSUM | DATA_VALID)) {
        malformed("unknown virtio flags");
        return -1;
    }
    if (base != GSO_NONE && base != GSO_TCPV4 && base != GSO_UDP && base != GSO_TCPV6 &&
        base != GSO_UDP_L4) {
        malformed("unknown gso_type");
        return -1;
    }
    if ((Py_ssize_t)hdr_len > n) {
        malformed("hdr_len exceeds the packet length");
        return -1;
    }
    if ((flags & NEEDS_CSUM) && (Py_ssize_t)csum_start + (Py_ssize_t)csum_offset + 2 > n) {
        malformed("checksum field lies outside the packet");
        return -1;
    }
    if (base == GSO_NONE) {
        if (gso_type & GSO_ECN) {
            malformed("GSO_ECN without a GSO type");
            return -1;
        }
        return 0;
    }
    if (gso_size == 0) {
        malformed("GSO type set but gso_size is 0");
        return -1;
    }
    if (!(flags & NEEDS_CSUM)) {
        malformed("GSO packet without NEEDS_CSUM");
        return -1;
    }
    return 0;
}

/* Segment a TSO/USO packet; gso.py's _segment. */
static PyObject *
segment(unsigned base, Py_ssize_t gso_size, Py_ssize_t csum_start, Py_ssize_t csum_offset,
        const uint8_t *d, Py_ssize_t n)
{
    int tcp = base != GSO_UDP_L4;
    unsigned proto = tcp ? PROTO_TCP : PROTO_UDP;
    int v4;
    Py_ssize_t ihl, hlen, payload, nseg, i, start, csum_pos;
    uint32_t addr_sum, ip_id = 0, seq = 0;
    unsigned tcp_flags = 0;
    PyObject *list;

    if (csum_offset != (tcp ? 16 : 6)) {
        return malformed("csum_offset is not the L4 checksum field");
    }
    /* validate_fields guaranteed n >= 2 */
    if ((d[0] >> 4) == 4) {
        v4 = 1;
        if (base == GSO_TCPV6) {
            return malformed("GSO_TCPV6 on an IPv4 packet");
        }
        if (n < 20) {
            return malformed("truncated IPv4 header");
        }
        ihl = (Py_ssize_t)(d[0] & 0x0F) * 4;
        if (ihl < 20) {
            return malformed("IPv4 header length < 20");
        }
        if (csum_start != ihl) {
            return malformed("csum_start != IPv4 header length");
        }
        if ((Py_ssize_t)rd16(d + 2) != n) {
            return malformed("IPv4 total length does not match the packet");
        }
        if ((d[6] & 0x3F) || d[7]) {
            return malformed("GSO packet is an IPv4 fragment");
        }
        if (d[9] != proto) {
            return malformed("IPv4 protocol does not match gso_type");
        }
        addr_sum = be_sum(d + 12, 8);
        ip_id = rd16(d + 4);
    }
    else if ((d[0] >> 4) == 6) {
        v4 = 0;
        if (base == GSO_TCPV4) {
            return malformed("GSO_TCPV4 on an IPv6 packet");
        }
        if (n < 40) {
            return malformed("truncated IPv6 header");
        }
        if (csum_start != 40) {
            return malformed("csum_start != 40 (IPv6 extension headers?)");
        }
        if ((Py_ssize_t)rd16(d + 4) != n - 40) {
            return malformed("IPv6 payload length does not match the packet");
        }
        if (d[6] != proto) {
            return malformed("IPv6 next header does not match gso_type");
        }
        addr_sum = be_sum(d + 8, 32);
        ihl = 40;
    }
    else {
        return malformed("unknown IP version in a GSO packet");
    }

    if (tcp) {
        unsigned doff;
        if (ihl + 20 > n) {
            return malformed("truncated TCP header");
        }
        doff = d[ihl + 12] >> 4;
        if (doff < 5) {
            return malformed("TCP data offset < 5");
        }
        hlen = ihl + (Py_ssize_t)doff * 4;
        if (hlen > n) {
            return malformed("TCP options run past the packet");
        }
        seq = rd32(d + ihl + 4);
        tcp_flags = d[ihl + 13];
    }
    else {
        hlen = ihl + 8;
        if (hlen > n) {
            return malformed("truncated UDP header");
        }
    }

    payload = n - hlen;
    nseg = payload == 0 ? 1 : (payload + gso_size - 1) / gso_size;
    list = PyList_New(nseg);
    if (list == NULL) {
        return NULL;
    }
    csum_pos = ihl + csum_offset;
    start = hlen;
    for (i = 0; i < nseg; i++) {
        Py_ssize_t end = start + gso_size < n ? start + gso_size : n;
        Py_ssize_t plen = end - start;
        Py_ssize_t l4len = hlen - ihl + plen;
        int last = i == nseg - 1;
        PyObject *seg = PyBytes_FromStringAndSize(NULL, hlen + plen);
        uint8_t *o;
        uint32_t c;

        if (seg == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        o = (uint8_t *)PyBytes_AS_STRING(seg);
        memcpy(o, d, (size_t)hlen);
        memcpy(o + hlen, d + start, (size_t)plen);
        if (v4) {
            wr16(o + 2, (uint32_t)(hlen + plen));
            wr16(o + 4, (ip_id + (uint32_t)i) & M16);
            o[10] = o[11] = 0;
            wr16(o + 10, ~fold64(be_sum(o, ihl)) & M16);
        }
        else {
            wr16(o + 4, (uint32_t)l4len);
        }
        if (tcp) {
            unsigned f = tcp_flags;
            wr32(o + ihl + 4, seq + (uint32_t)(start - hlen));
            if (!last) {
                f &= ~(unsigned)(TCP_FIN | TCP_PSH);
            }
            if (i) {
                f &= ~(unsigned)TCP_CWR;
            }
            o[ihl + 13] = (uint8_t)f;
        }
        else {
            wr16(o + ihl + 4, (uint32_t)l4len);
        }
        o[csum_pos] = o[csum_pos + 1] = 0;
        /* Both parts start at an even offset from the L4 header (its length
         * is a multiple of 4), so their folded sums simply add up. */
        c = ~fold64((uint64_t)addr_sum + proto + (uint64_t)l4len + be_sum(o + ihl, hlen - ihl) +
                    be_sum(o + hlen, plen)) &
            M16;
        if (!tcp && c == 0) {
            c = M16;
        }
        wr16(o + csum_pos, c);
        PyList_SET_ITEM(list, i, seg);
        start = end;
    }
    return list;
}

static PyObject *
py_split(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const char *names[6] = {"flags",    "gso_type",   "hdr_len",
                                   "gso_size", "csum_start", "csum_offset"};
    static const long long maxes[6] = {0xFF, 0xFF, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF};
    long long f[6];
    Py_buffer view;
    PyObject *tmp, *result = NULL;
    const uint8_t *d;
    Py_ssize_t n;
    unsigned base;
    int i;

    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "split(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, "
                        "packet) takes exactly 7 arguments");
        return NULL;
    }
    /* The reference converts the packet with bytes() before looking at the
     * header, so a non-buffer packet fails first there too. */
    if (get_bytes(args[6], &view, &tmp) < 0) {
        return NULL;
    }
    for (i = 0; i < 6; i++) {
        f[i] = int_in_range(args[i], maxes[i], MalformedPacket, names[i]);
        if (f[i] < 0) {
            release(&view, tmp);
            return NULL;
        }
    }
    d = (const uint8_t *)view.buf;
    n = view.len;
    if (validate_fields((unsigned)f[0], (unsigned)f[1], (unsigned)f[2], (unsigned)f[3],
                        (unsigned)f[4], (unsigned)f[5], n) < 0) {
        goto done;
    }
    base = (unsigned)f[1] & ~(unsigned)GSO_ECN;
    if (base == GSO_NONE) {
        PyObject *seg;
        if (f[0] & NEEDS_CSUM) {
            Py_ssize_t cs = (Py_ssize_t)f[4], pos = cs + (Py_ssize_t)f[5];
            uint32_t c;
            uint8_t *o;
            /* validate_fields checked pos + 2 <= n */
            seg = PyBytes_FromStringAndSize((const char *)d, n);
            if (seg == NULL) {
                goto done;
            }
            o = (uint8_t *)PyBytes_AS_STRING(seg);
            /* The field holds the pseudo-header sum and is summed with the
             * rest; a 0 result goes out as 0xFFFF, as the kernel writes it. */
            c = ~be_sum(o + cs, n - cs) & M16;
            wr16(o + pos, c ? c : M16);
        }
        else if (tmp != NULL) {
            seg = tmp;
            Py_INCREF(seg);
        }
        else if (PyBytes_CheckExact(args[6])) {
            seg = args[6];
            Py_INCREF(seg);
        }
        else {
            seg = PyBytes_FromStringAndSize((const char *)d, n);
            if (seg == NULL) {
                goto done;
            }
        }
        result = PyList_New(1);
        if (result == NULL) {
            Py_DECREF(seg);
            goto done;
        }
        PyList_SET_ITEM(result, 0, seg);
        goto done;
    }
    if (base == GSO_UDP) {
        malformed("GSO_UDP (UFO) cannot be segmented");
        goto done;
    }
    result = segment(base, (Py_ssize_t)f[3], (Py_ssize_t)f[4], (Py_ssize_t)f[5], d, n);
done:
    release(&view, tmp);
    return result;
}

/* ------------------------------------------------------------------ */
/* GRO                                                                 */
/* ------------------------------------------------------------------ */

static PyObject *
parsed_tuple(int kind, PyObject *key, PyObject *match, Py_ssize_t ihl, Py_ssize_t hlen,
             Py_ssize_t plen, uint32_t seq, uint32_t ip_id, int id_free, unsigned psh)
{
    /* Steals key and match (either may be NULL after a failed allocation). */
    PyObject *t;
    if (key == NULL || match == NULL) {
        Py_XDECREF(key);
        Py_XDECREF(match);
        return NULL;
    }
    t = Py_BuildValue("(iNNnnnkkiI)", kind, key, match, ihl, hlen, plen, (unsigned long)seq,
                      (unsigned long)ip_id, id_free, psh);
    return t;
}

static PyObject *
no_flow(int kind)
{
    return parsed_tuple(kind, PyBytes_FromStringAndSize(NULL, 0),
                        PyBytes_FromStringAndSize(NULL, 0), 0, 0, 0, 0, 0, 0, 0);
}

static PyObject *
solo(PyObject *key)
{
    return parsed_tuple(KIND_SOLO, key, PyBytes_FromStringAndSize(NULL, 0), 0, 0, 0, 0, 0, 0,
                        0);
}

/* gro.parse */
static PyObject *
gro_parse_impl(const uint8_t *d, Py_ssize_t n)
{
    Py_ssize_t ihl, total, l4len, thl, plen, hlen;
    unsigned proto;
    uint8_t ip_match[5];
    Py_ssize_t ip_match_len;
    uint32_t addr_sum, ip_id, seq;
    int id_free;
    PyObject *key, *match;
    uint8_t *k;

    if (n == 0) {
        return malformed("empty packet");
    }
    if ((d[0] >> 4) == 4) {
        if (n < 20) {
            return malformed("truncated IPv4 header");
        }
        ihl = (Py_ssize_t)(d[0] & 0x0F) * 4;
        if (ihl < 20) {
            return malformed("IPv4 header length < 20");
        }
        total = (Py_ssize_t)rd16(d + 2);
        if (total < ihl || total > n) {
            return malformed("IPv4 total length outside the packet");
        }
        proto = d[9];
        if (proto != PROTO_TCP && proto != PROTO_UDP) {
            return no_flow(KIND_OTHER);
        }
        if ((d[6] & 0x3F) || d[7] || total - ihl < 4) {
            return no_flow(KIND_BARRIER);
        }
        key = PyBytes_FromStringAndSize(NULL, 13);
        if (key == NULL) {
            return NULL;
        }
        k = (uint8_t *)PyBytes_AS_STRING(key);
        k[0] = d[9];
        memcpy(k + 1, d + 12, 8);
        memcpy(k + 9, d + ihl, 4);
        if (ihl != 20 || total != n || be_sum(d, 20) != M16) {
            return solo(key);
        }
        ip_match[0] = d[1];
        ip_match[1] = d[6];
        ip_match[2] = d[8];
        ip_match_len = 3;
        addr_sum = be_sum(d + 12, 8);
        ip_id = rd16(d + 4);
        id_free = (d[6] & 0x40) ? 1 : 0;
    }
    else if ((d[0] >> 4) == 6) {
        Py_ssize_t pl;
        if (n < 40) {
            return malformed("truncated IPv6 header");
        }
        pl = (Py_ssize_t)rd16(d + 4);
        if (40 + pl > n) {
            return malformed("IPv6 payload length past the packet");
        }
        proto = d[6];
        if (proto != PROTO_TCP && proto != PROTO_UDP) {
            switch (proto) {
                case 0:
                case 43:
                case 44:
                case 51:
                case 60:
                case 135:
                case 139:
                case 140:
                case 253:
                case 254:
                    return no_flow(KIND_BARRIER);
                default:
                    return no_flow(KIND_OTHER);
            }
        }
        if (pl < 4) {
            return no_flow(KIND_BARRIER);
        }
        ihl = 40;
        total = 40 + pl;
        key = PyBytes_FromStringAndSize(NULL, 37);
        if (key == NULL) {
            return NULL;
        }
        k = (uint8_t *)PyBytes_AS_STRING(key);
        k[0] = d[6];
        memcpy(k + 1, d + 8, 36);
        if (total != n) {
            return solo(key);
        }
        memcpy(ip_match, d, 4);
        ip_match[4] = d[7];
        ip_match_len = 5;
        addr_sum = be_sum(d + 8, 32);
        ip_id = 0;
        id_free = 1;
    }
    else {
        return malformed("unknown IP version");
    }

    /* From here on total == n. */
    l4len = total - ihl;
    if (proto == PROTO_TCP) {
        unsigned flags;
        if (l4len < 20) {
            return solo(key);
        }
        thl = (Py_ssize_t)(d[ihl + 12] >> 4) * 4;
        flags = d[ihl + 13];
        plen = l4len - thl;
        if (thl < 20 || plen <= 0 || (flags != TCP_ACK && flags != (TCP_ACK | TCP_PSH))) {
            return solo(key);
        }
    }
    else {
        thl = 8;
        plen = l4len - 8;
        if (plen <= 0 || (Py_ssize_t)rd16(d + ihl + 4) != l4len ||
            !(d[ihl + 6] || d[ihl + 7])) {
            return solo(key);
        }
    }
    if (fold64((uint64_t)addr_sum + proto + (uint64_t)l4len + be_sum(d + ihl, l4len)) != M16) {
        return solo(key);
    }
    hlen = ihl + thl;
    if (proto == PROTO_TCP) {
        uint8_t *m;
        /* ip_match + ACK, data offset + window + urgent pointer, options */
        match = PyBytes_FromStringAndSize(NULL, ip_match_len + 5 + 2 + (thl - 18));
        if (match == NULL) {
            Py_DECREF(key);
            return NULL;
        }
        m = (uint8_t *)PyBytes_AS_STRING(match);
        memcpy(m, ip_match, (size_t)ip_match_len);
        m += ip_match_len;
        memcpy(m, d + ihl + 8, 5);
        memcpy(m + 5, d + ihl + 14, 2);
        memcpy(m + 7, d + ihl + 18, (size_t)(thl - 18));
        seq = rd32(d + ihl + 4);
        return parsed_tuple(KIND_TCP, key, match, ihl, hlen, plen, seq, ip_id, id_free,
                            (unsigned)(d[ihl + 13] & TCP_PSH));
    }
    match = PyBytes_FromStringAndSize((const char *)ip_match, ip_match_len);
    return parsed_tuple(KIND_UDP, key, match, ihl, hlen, plen, 0, ip_id, id_free, 0);
}

static PyObject *
py_gro_parse(PyObject *self, PyObject *packet)
{
    Py_buffer view;
    PyObject *tmp, *result;

    if (get_bytes(packet, &view, &tmp) < 0) {
        return NULL;
    }
    result = gro_parse_impl((const uint8_t *)view.buf, view.len);
    release(&view, tmp);
    return result;
}

/* gro.build(first, ihl, hlen, gso_size, psh, payloads) */
static PyObject *
py_gro_build(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    long long ihl, hlen, gso_size, psh;
    Py_buffer first;
    PyObject *first_tmp, *seq = NULL, *result = NULL;
    Py_buffer *views = NULL;
    PyObject **tmps = NULL;
    Py_ssize_t count = 0, got = 0, i, total, l4len;
    int v6, tcp;
    const uint8_t *f;
    uint8_t *o, *h;
    unsigned proto, csum_offset, gso_type;
    uint32_t addr_sum;
    uint16_t vh[3];

    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "build(first, ihl, hlen, gso_size, psh, payloads) takes 6 arguments");
        return NULL;
    }
    if (get_bytes(args[0], &first, &first_tmp) < 0) {
        return NULL;
    }
    f = (const uint8_t *)first.buf;
    if ((ihl = int_in_range(args[1], 0xFFFF, PyExc_ValueError, "ihl")) < 0 ||
        (hlen = int_in_range(args[2], 0xFFFF, PyExc_ValueError, "hlen")) < 0 ||
        (gso_size = int_in_range(args[3], 0xFFFF, PyExc_ValueError, "gso_size")) < 0 ||
        (psh = int_in_range(args[4], 0xFF, PyExc_ValueError, "psh")) < 0) {
        goto done;
    }
    if (!(20 <= ihl && hlen <= first.len && (hlen - ihl == 8 || hlen - ihl >= 20))) {
        PyErr_SetString(PyExc_ValueError, "inconsistent header lengths");
        goto done;
    }
    /* hlen >= ihl + 8 >= 28 now, so f[0] exists */
    v6 = (f[0] >> 4) == 6;
    if (v6 != (ihl == 40) || (!v6 && (f[0] >> 4) != 4)) {
        PyErr_SetString(PyExc_ValueError, "IP version does not match the header length");
        goto done;
    }
    seq = PySequence_Fast(args[5], "payloads must be a sequence");
    if (seq == NULL) {
        goto done;
    }
    count = PySequence_Fast_GET_SIZE(seq);
    views = PyMem_Calloc((size_t)(count ? count : 1), sizeof(Py_buffer));
    tmps = PyMem_Calloc((size_t)(count ? count : 1), sizeof(PyObject *));
    if (views == NULL || tmps == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    total = hlen;
    for (got = 0; got < count; got++) {
        if (get_bytes(PySequence_Fast_GET_ITEM(seq, got), &views[got], &tmps[got]) < 0) {
            goto done;
        }
        total += views[got].len;
        if (total > 0x1FFFF) {
            break; /* far too long already; reported below */
        }
    }
    l4len = total - ihl;
    if ((v6 ? l4len : total) > (Py_ssize_t)M16) {
        if (got < count) {
            got++; /* the view that tipped it over was acquired */
        }
        PyErr_SetString(PyExc_ValueError, "merged packet too long");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, VIRTIO_NET_HDR_LEN + total);
    if (result == NULL) {
        goto done;
    }
    o = (uint8_t *)PyBytes_AS_STRING(result);
    h = o + VIRTIO_NET_HDR_LEN;
    memcpy(h, f, (size_t)hlen);
    {
        uint8_t *p = h + hlen;
        for (i = 0; i < count; i++) {
            memcpy(p, views[i].buf, (size_t)views[i].len);
            p += views[i].len;
        }
    }
    if (v6) {
        wr16(h + 4, (uint32_t)l4len);
        addr_sum = be_sum(h + 8, 32);
    }
    else {
        wr16(h + 2, (uint32_t)total);
        h[10] = h[11] = 0;
        wr16(h + 10, ~fold64(be_sum(h, ihl)) & M16);
        addr_sum = be_sum(h + 12, 8);
    }
    tcp = hlen - ihl != 8;
    if (tcp) {
        h[ihl + 13] |= (uint8_t)psh;
        proto = PROTO_TCP;
        csum_offset = 16;
        gso_type = v6 ? GSO_TCPV6 : GSO_TCPV4;
    }
    else {
        wr16(h + ihl + 4, (uint32_t)l4len);
        proto = PROTO_UDP;
        csum_offset = 6;
        gso_type = GSO_UDP_L4;
    }
    wr16(h + ihl + csum_offset, fold64((uint64_t)addr_sum + proto + (uint64_t)l4len));
    /* struct "=BBHHHH": native byte order, no padding */
    o[0] = NEEDS_CSUM;
    o[1] = (uint8_t)gso_type;
    vh[0] = (uint16_t)hlen;
    vh[1] = (uint16_t)gso_size;
    vh[2] = (uint16_t)ihl;
    memcpy(o + 2, vh, 6);
    vh[0] = (uint16_t)csum_offset;
    memcpy(o + 8, vh, 2);
done:
    for (i = 0; i < got; i++) {
        release(&views[i], tmps[i]);
    }
    PyMem_Free(views);
    PyMem_Free(tmps);
    Py_XDECREF(seq);
    release(&first, first_tmp);
    return result;
}

/* ------------------------------------------------------------------ */
/* Module                                                              */
/* ------------------------------------------------------------------ */

static PyMethodDef methods[] = {
    {"ones_complement_sum", (PyCFunction)(void (*)(void))py_ones_complement_sum,
     METH_VARARGS | METH_KEYWORDS,
     "ones_complement_sum(data, initial=0)\n--\n\nSee trio_tun.offload.checksum."},
    {"checksum", (PyCFunction)(void (*)(void))py_checksum, METH_VARARGS | METH_KEYWORDS,
     "checksum(data, initial=0)\n--\n\nSee trio_tun.offload.checksum."},
    {"split", (PyCFunction)(void (*)(void))py_split, METH_FASTCALL,
     "split(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, packet)\n--\n\n"
     "See trio_tun.offload.gso.split_fields."},
    {"gro_parse", (PyCFunction)py_gro_parse, METH_O,
     "gro_parse(packet)\n--\n\nSee trio_tun.offload.gro.parse."},
    {"gro_build", (PyCFunction)(void (*)(void))py_gro_build, METH_FASTCALL,
     "gro_build(first, ihl, hlen, gso_size, psh, payloads)\n--\n\n"
     "See trio_tun.offload.gro.build."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "trio_tun.offload._speedups",
    "Compiled hot paths of trio_tun.offload (optional; the Python modules are the reference).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *m, *errors;

    errors = PyImport_ImportModule("trio_tun.offload.errors");
    if (errors == NULL) {
        return NULL;
    }
    Py_XDECREF(MalformedPacket);
    MalformedPacket = PyObject_GetAttrString(errors, "MalformedPacket");
    Py_DECREF(errors);
    if (MalformedPacket == NULL) {
        return NULL;
    }
    m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    return m;
}
