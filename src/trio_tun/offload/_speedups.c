/*
 * Optional compiled versions of the hot paths of trio_tun.offload.
 *
 * Every function here has a pure-Python reference (checksum.py, gso.py,
 * gro.py) and must return byte-identical results and raise MalformedPacket
 * (with the same message) for exactly the inputs the reference rejects; the
 * test suite compares the two.  Everything runs with the GIL held: the work
 * per call is a few microseconds, far less than the cost of dropping and
 * retaking the GIL, and holding it keeps the buffers we read from stable.
 *
 * All packet bytes are untrusted.  Every offset is checked against the
 * buffer length before it is dereferenced; lengths are Py_ssize_t and the
 * header fields are at most 16 bits, so none of the sums can overflow.
 *
 * Arguments of unusual types (objects whose truth value or comparison is
 * their own Python code, buffers that are not C-contiguous, ...) are handed
 * to the Python reference instead of being imitated here: that keeps the
 * behaviour identical without making the fast path any slower.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SSE2__) && (defined(__x86_64__) || defined(__i386__))
#include <emmintrin.h>
#define HAVE_SSE2_SUM 1
#endif
/* An AVX2 loop beside the SSE2 one, chosen at import on CPUs that have it:
 * the build targets baseline x86-64, so it is compiled for AVX2 on its own. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_AVX2_SUM 1
#endif

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

/* gro.UDP_MAX_SEGMENTS */
#define UDP_MAX_SEGMENTS 64

/* ------------------------------------------------------------------ */
/* Internet checksum                                                   */
/* ------------------------------------------------------------------ */

/* Fold to 16 bits with end-around carry.  A non-zero input never folds to 0,
 * which is the convention the Python reference uses ((n - 1) % 0xFFFF + 1);
 * the result is congruent to the input modulo 0xFFFF. */
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

/* Folded ones'-complement sum of big-endian 16-bit words, the last odd byte
 * padded with zero.  0 only when every byte is 0.
 *
 * We add native 32-bit words into 64-bit accumulators: a 32-bit word is its
 * two 16-bit halves modulo 0xFFFF (2**16 == 1), the accumulators cannot
 * overflow for any buffer shorter than 2**32 words, and the sum is
 * order-independent, so folding gives the sum of the native 16-bit words.
 * On little-endian machines those are byte-swapped big-endian words, and the
 * folded sum of swapped words is the swapped folded sum (RFC 1071 section
 * 2(B)). */
#ifdef HAVE_AVX2_SUM
/* Set at import when the CPU has AVX2. */
static int use_avx2 = 0;

/* be_sum's main loop 32 bytes at a time: the sum of the native 32-bit words
 * of p[0 : len rounded down to 64], p and len moved past them.  With d (a
 * constant in each caller, so each gets its own loop) it also stores what it
 * loads there, and moves d along. */
__attribute__((target("avx2"), always_inline)) static inline uint64_t
sum_loop_avx2(uint8_t **pd, const uint8_t **pp, Py_ssize_t *plen)
{
    const uint8_t *p = *pp;
    uint8_t *d = pd != NULL ? *pd : NULL;
    Py_ssize_t len = *plen;
    const __m256i z = _mm256_setzero_si256();
    __m256i a0 = z, a1 = z, a2 = z, a3 = z;
    uint64_t t[4];

    while (len >= 64) {
        __m256i x0 = _mm256_loadu_si256((const __m256i *)(const void *)p);
        __m256i x1 = _mm256_loadu_si256((const __m256i *)(const void *)(p + 32));
        if (pd != NULL) {
            _mm256_storeu_si256((__m256i *)(void *)d, x0);
            _mm256_storeu_si256((__m256i *)(void *)(d + 32), x1);
            d += 64;
        }
        a0 = _mm256_add_epi64(a0, _mm256_unpacklo_epi32(x0, z));
        a1 = _mm256_add_epi64(a1, _mm256_unpackhi_epi32(x0, z));
        a2 = _mm256_add_epi64(a2, _mm256_unpacklo_epi32(x1, z));
        a3 = _mm256_add_epi64(a3, _mm256_unpackhi_epi32(x1, z));
        p += 64;
        len -= 64;
    }
    a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    _mm256_storeu_si256((__m256i *)(void *)t, a0);
    *pp = p;
    if (pd != NULL) {
        *pd = d;
    }
    *plen = len;
    return t[0] + t[1] + t[2] + t[3];
}

__attribute__((target("avx2"))) static uint64_t
sum_avx2(const uint8_t **pp, Py_ssize_t *plen)
{
    return sum_loop_avx2(NULL, pp, plen);
}

/* copy_sum's main loop: sum_avx2 that also copies to *pd. */
__attribute__((target("avx2"))) static uint64_t
copy_sum_avx2(uint8_t **pd, const uint8_t **pp, Py_ssize_t *plen)
{
    return sum_loop_avx2(pd, pp, plen);
}
#endif

static uint32_t
be_sum(const uint8_t *p, Py_ssize_t len)
{
    uint64_t s = 0;
    uint32_t w, f;

#ifdef HAVE_AVX2_SUM
    if (use_avx2 && len >= 64) {
        s = sum_avx2(&p, &len);
    }
#endif

#ifdef HAVE_SSE2_SUM
    if (len >= 16) {
        const __m128i z = _mm_setzero_si128();
        __m128i a0 = z, a1 = z, a2 = z, a3 = z;
        uint64_t t[2];

        while (len >= 64) {
            __m128i x0 = _mm_loadu_si128((const __m128i *)(const void *)p);
            __m128i x1 = _mm_loadu_si128((const __m128i *)(const void *)(p + 16));
            __m128i x2 = _mm_loadu_si128((const __m128i *)(const void *)(p + 32));
            __m128i x3 = _mm_loadu_si128((const __m128i *)(const void *)(p + 48));
            a0 = _mm_add_epi64(a0, _mm_unpacklo_epi32(x0, z));
            a1 = _mm_add_epi64(a1, _mm_unpackhi_epi32(x0, z));
            a2 = _mm_add_epi64(a2, _mm_unpacklo_epi32(x1, z));
            a3 = _mm_add_epi64(a3, _mm_unpackhi_epi32(x1, z));
            a0 = _mm_add_epi64(a0, _mm_unpacklo_epi32(x2, z));
            a1 = _mm_add_epi64(a1, _mm_unpackhi_epi32(x2, z));
            a2 = _mm_add_epi64(a2, _mm_unpacklo_epi32(x3, z));
            a3 = _mm_add_epi64(a3, _mm_unpackhi_epi32(x3, z));
            p += 64;
            len -= 64;
        }
        while (len >= 16) {
            __m128i x0 = _mm_loadu_si128((const __m128i *)(const void *)p);
            a0 = _mm_add_epi64(a0, _mm_unpacklo_epi32(x0, z));
            a1 = _mm_add_epi64(a1, _mm_unpackhi_epi32(x0, z));
            p += 16;
            len -= 16;
        }
        a0 = _mm_add_epi64(_mm_add_epi64(a0, a1), _mm_add_epi64(a2, a3));
        _mm_storeu_si128((__m128i *)(void *)t, a0);
        s += t[0] + t[1];
    }
#else
    {
        uint64_t s1 = 0, s2 = 0, s3 = 0;
        uint32_t w1, w2, w3;
        while (len >= 16) {
            memcpy(&w, p, 4);
            memcpy(&w1, p + 4, 4);
            memcpy(&w2, p + 8, 4);
            memcpy(&w3, p + 12, 4);
            s += w;
            s1 += w1;
            s2 += w2;
            s3 += w3;
            p += 16;
            len -= 16;
        }
        s += s1 + s2 + s3;
    }
#endif
    while (len >= 4) {
        memcpy(&w, p, 4);
        s += w;
        p += 4;
        len -= 4;
    }
    if (len > 0) {
        /* Zero padding after the data keeps every word where it was. */
        uint8_t tail[4] = {0, 0, 0, 0};
        memcpy(tail, p, (size_t)len);
        memcpy(&w, tail, 4);
        s += w;
    }
    f = fold64(s);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return f;
#else
    return ((f & 0xFFu) << 8) | (f >> 8);
#endif
}

/* memcpy(d, p, len), then be_sum(d, len), in one pass over the data where the
 * CPU allows: split copies and sums every payload byte, and reading it once
 * is cheaper than twice. */
static uint32_t
copy_sum(uint8_t *d, const uint8_t *p, Py_ssize_t len)
{
#ifdef HAVE_AVX2_SUM
    if (use_avx2 && len >= 64) {
        uint32_t head = fold64(copy_sum_avx2(&d, &p, &len));
        /* The prefix is a multiple of 64 bytes long, so the rest's words
         * stay aligned as they were; both sums are folded, and adding folded
         * one's complement sums is the sum of the whole. */
#if !(defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__)
        head = ((head & 0xFFu) << 8) | (head >> 8);
#endif
        memcpy(d, p, (size_t)len);
        return fold64((uint64_t)head + be_sum(d, len));
    }
#endif
    memcpy(d, p, (size_t)len);
    return be_sum(d, len);
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
/* Segments: the packets segment() cuts from a super-packet            */
/* ------------------------------------------------------------------ */

/* A bytes subclass for the packets segment() builds.  Its type marks where
 * the object came from: each one left segment() with a TCP or UDP checksum
 * computed here over its own bytes, and bytes are immutable, so coalescing
 * one back (gro_add) need not sum its payload again to check that checksum.
 * A forwarder that passes packets on unchanged, a filter or a router, then
 * sums each byte once instead of twice.  Python code cannot make one (no
 * __new__, no subclasses), and a copy or a pickle of one is a plain bytes
 * object, so the mark cannot be put on bytes that segment() did not write.
 *
 * They come from a small free list too: a forwarder frees one batch of
 * segments just before it splits the next, and glibc's malloc serves blocks
 * of this size (1.5 KiB, above its per-thread cache) from slower bins, at
 * tens of nanoseconds per segment and with cold memory. */

/* What one pooled block holds: the object header, up to SEGMENT_POOLED
 * bytes, and the trailing NUL every bytes object has. */
#define SEGMENT_BLOCK 2048
#define SEGMENT_POOLED (SEGMENT_BLOCK - (Py_ssize_t)offsetof(PyBytesObject, ob_sval) - 1)
/* At most 2 MiB kept: more than a default batch's segments (512 KiB). */
#define SEGMENT_POOL_MAX 1024

/* Guarded by the GIL, as every call here is; not under AddressSanitizer,
 * which would miss a use after free of a pooled block. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SEGMENT_NO_POOL 1
#endif
#endif
#if !defined(Py_GIL_DISABLED) && !defined(__SANITIZE_ADDRESS__) && !defined(SEGMENT_NO_POOL)
#define SEGMENT_POOL 1
static void *segment_pool[SEGMENT_POOL_MAX];
static int segment_pool_len = 0;
#endif

static PyTypeObject SegmentType;

/* A Segment of `size` bytes, its contents not yet written. */
static PyObject *
new_segment(Py_ssize_t size)
{
    PyBytesObject *op = NULL;

    if (size <= SEGMENT_POOLED) {
#ifdef SEGMENT_POOL
        if (segment_pool_len > 0) {
            op = (PyBytesObject *)segment_pool[--segment_pool_len];
        }
#endif
        if (op == NULL) {
            op = (PyBytesObject *)PyObject_Malloc(SEGMENT_BLOCK);
        }
    }
    else {
        op = (PyBytesObject *)PyObject_Malloc(
            (size_t)offsetof(PyBytesObject, ob_sval) + (size_t)size + 1);
    }
    if (op == NULL) {
        return PyErr_NoMemory();
    }
    (void)PyObject_InitVar((PyVarObject *)op, &SegmentType, size);
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif
    /* Not hashed yet (a recycled block may hold the last one's hash). */
    op->ob_shash = -1;
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
    op->ob_sval[size] = '\0';
    return (PyObject *)op;
}

static void
segment_dealloc(PyObject *op)
{
#ifdef SEGMENT_POOL
    if (Py_SIZE(op) <= SEGMENT_POOLED && segment_pool_len < SEGMENT_POOL_MAX) {
        segment_pool[segment_pool_len++] = op;
        return;
    }
#endif
    PyObject_Free(op);
}

static PyObject *
segment_reduce(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    /* Unpickled (and copied) as plain bytes: see the type's comment. */
    return Py_BuildValue("(O(y#))", (PyObject *)&PyBytes_Type, PyBytes_AS_STRING(self),
                         PyBytes_GET_SIZE(self));
}

static PyMethodDef Segment_methods[] = {
    {"__reduce__", segment_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SegmentType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "trio_tun.offload._speedups.Segment",
    /* tp_basicsize, tp_itemsize and tp_base are bytes' own, set at import. */
    .tp_dealloc = segment_dealloc,
    .tp_free = PyObject_Free,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .tp_doc = PyDoc_STR("A packet cut from a super-packet by split(): bytes whose TCP or UDP\n"
                        "checksum was computed here.  Not made from Python; copies are bytes."),
    .tp_methods = Segment_methods,
};

/* Whether get_packet's *owned is a Segment, whose checksums need no check. */
static inline int
is_segment(PyObject *owned)
{
    return owned != NULL && Py_IS_TYPE(owned, &SegmentType);
}

/* Exact bytes, or a Segment: bytes whose every method is bytes' own. */
static inline int
plain_bytes(PyObject *obj)
{
    return PyBytes_CheckExact(obj) || Py_IS_TYPE(obj, &SegmentType);
}

/* ------------------------------------------------------------------ */
/* Argument helpers                                                    */
/* ------------------------------------------------------------------ */

/* Get a contiguous byte view of obj.  Anything bytes() accepts but that is not
 * a simple buffer (a non-contiguous memoryview, ...) is copied first.  On
 * success the caller must release(view, tmp). */
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

/* The bytes of a packet argument, as the reference gets them with
 * `packet if type(packet) is bytes else bytes(packet)`.
 *
 * Exact bytes, bytearray and memoryview objects are read in place (bytes()
 * of those is a plain copy and runs no Python code); anything else goes
 * through bytes() itself, which may call the object's own __bytes__ or
 * __iter__.  With `copy` set, bytearray and memoryview go through bytes()
 * too: a caller that keeps the data past its return, or that lets Python
 * code run before it is done, must not hold on to a buffer somebody else
 * may write to.
 *
 * On success *owned is a new reference to an exact bytes object or a Segment,
 * or NULL and *view holds a buffer to release. */
static int
get_packet(PyObject *obj, int copy, PyObject **owned, Py_buffer *view, const uint8_t **d,
           Py_ssize_t *n)
{
    PyObject *b;

    if (plain_bytes(obj)) {
        Py_INCREF(obj);
        *owned = obj;
        *d = (const uint8_t *)PyBytes_AS_STRING(obj);
        *n = PyBytes_GET_SIZE(obj);
        return 0;
    }
    if (!copy && (PyByteArray_CheckExact(obj) || PyMemoryView_Check(obj))) {
        if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) == 0) {
            *owned = NULL;
            *d = (const uint8_t *)view->buf;
            *n = view->len;
            return 0;
        }
        /* Not C-contiguous, released, ...: bytes() copies it or raises
         * exactly what the reference raises. */
        PyErr_Clear();
    }
    b = PyObject_CallOneArg((PyObject *)&PyBytes_Type, obj);
    if (b == NULL) {
        return -1;
    }
    if (!PyBytes_CheckExact(b)) {
        /* A bytes subclass from __bytes__: keep only its bytes. */
        Py_SETREF(b, PyBytes_FromStringAndSize(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b)));
        if (b == NULL) {
            return -1;
        }
    }
    *owned = b;
    *d = (const uint8_t *)PyBytes_AS_STRING(b);
    *n = PyBytes_GET_SIZE(b);
    return 0;
}

static void
put_packet(PyObject *owned, Py_buffer *view)
{
    if (owned != NULL) {
        Py_DECREF(owned);
    }
    else {
        PyBuffer_Release(view);
    }
}

static PyObject *
malformed(const char *msg)
{
    PyErr_SetString(MalformedPacket, msg);
    return NULL;
}

/* Call the Python reference trio_tun.offload.<module>.<name>. */
static PyObject *
call_reference(const char *module, const char *name, PyObject *const *args, size_t nargs,
               PyObject *kwnames)
{
    PyObject *mod, *fn, *result;

    mod = PyImport_ImportModule(module);
    if (mod == NULL) {
        return NULL;
    }
    fn = PyObject_GetAttrString(mod, name);
    Py_DECREF(mod);
    if (fn == NULL) {
        return NULL;
    }
    result = PyObject_Vectorcall(fn, args, nargs, kwnames);
    Py_DECREF(fn);
    return result;
}

/* An int in [0, max] or -1 with an exception set.  Out of range (including
 * values too big for a C long long) raises `exc` with message `range_msg`. */
static long long
int_in_range(PyObject *obj, long long max, PyObject *exc, const char *what,
             const char *range_msg)
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
        if (range_msg != NULL) {
            PyErr_SetString(exc, range_msg);
        }
        else {
            PyErr_Format(exc, "%s out of range", what);
        }
        return -1;
    }
    return v;
}

/* Match keyword arguments of a METH_FASTCALL | METH_KEYWORDS function against
 * `names` (positional-or-keyword first, then keyword-only), imitating the
 * messages of a Python def.  `values` must hold NULL for every name and is
 * filled with borrowed references. */
static int
parse_args(const char *fname, const char *const *names, Py_ssize_t npositional, Py_ssize_t nnames,
           PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject **values)
{
    Py_ssize_t i, j, nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);

    if (nargs > npositional) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd positional argument%s but %zd were given",
                     fname, npositional, npositional == 1 ? "" : "s", nargs);
        return -1;
    }
    for (i = 0; i < nargs; i++) {
        values[i] = args[i];
    }
    for (i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        for (j = 0; j < nnames; j++) {
            if (PyUnicode_CompareWithASCIIString(key, names[j]) == 0) {
                break;
            }
        }
        if (j == nnames) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fname,
                         key);
            return -1;
        }
        if (values[j] != NULL) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fname,
                         names[j]);
            return -1;
        }
        values[j] = args[nargs + i];
    }
    for (j = 0; j < npositional; j++) {
        if (values[j] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing 1 required positional argument: '%s'",
                         fname, names[j]);
            return -1;
        }
    }
    return 0;
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
        initial =
            int_in_range(initial_obj, 0xFFFFFFFFLL, PyExc_ValueError, "initial", NULL);
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
py_ones_complement_sum(PyObject *Py_UNUSED(self), PyObject *args, PyObject *kwargs)
{
    uint32_t s;
    if (sum_args(args, kwargs, "O|O:ones_complement_sum", &s) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLong(s);
}

static PyObject *
py_checksum(PyObject *Py_UNUSED(self), PyObject *args, PyObject *kwargs)
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

/* virtio._validate_fields, after its range check */
static int
validate_fields(unsigned flags, unsigned gso_type, unsigned hdr_len, unsigned gso_size,
                unsigned csum_start, unsigned csum_offset, Py_ssize_t n)
{
    unsigned base = gso_type & ~(unsigned)GSO_ECN;

    if (flags & ~(unsigned)(NEEDS_CSUM | DATA_VALID)) {
        PyErr_Format(MalformedPacket, "unknown virtio flags 0x%x", flags);
        return -1;
    }
    if (base != GSO_NONE && base != GSO_TCPV4 && base != GSO_UDP && base != GSO_TCPV6 &&
        base != GSO_UDP_L4) {
        PyErr_Format(MalformedPacket, "unknown gso_type 0x%x", gso_type);
        return -1;
    }
    if ((Py_ssize_t)hdr_len > n) {
        PyErr_Format(MalformedPacket, "hdr_len %u exceeds packet length %zd", hdr_len, n);
        return -1;
    }
    if ((flags & NEEDS_CSUM) && (Py_ssize_t)csum_start + (Py_ssize_t)csum_offset + 2 > n) {
        PyErr_Format(MalformedPacket, "checksum field at %u+%u lies outside a %zd-byte packet",
                     csum_start, csum_offset, n);
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
    uint32_t addr_sum, ip_id = 0, seq = 0, ip_base = 0, l4_base;
    unsigned tcp_flags = 0;
    PyObject *list;

    if (csum_offset != (tcp ? 16 : 6)) {
        PyErr_Format(MalformedPacket, "csum_offset %zd is not the L4 checksum field",
                     csum_offset);
        return NULL;
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
            PyErr_Format(MalformedPacket, "IPv4 header length %zd < 20", ihl);
            return NULL;
        }
        if (csum_start != ihl) {
            PyErr_Format(MalformedPacket, "csum_start %zd != IPv4 header length %zd",
                         csum_start, ihl);
            return NULL;
        }
        if ((Py_ssize_t)rd16(d + 2) != n) {
            return malformed("IPv4 total length does not match the packet");
        }
        if ((d[6] & 0x3F) || d[7]) {
            return malformed("GSO packet is an IPv4 fragment");
        }
        if (d[9] != proto) {
            PyErr_Format(MalformedPacket, "IPv4 protocol %u does not match gso_type",
                         (unsigned)d[9]);
            return NULL;
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
            PyErr_Format(MalformedPacket, "csum_start %zd != 40 (IPv6 extension headers?)",
                         csum_start);
            return NULL;
        }
        if ((Py_ssize_t)rd16(d + 4) != n - 40) {
            return malformed("IPv6 payload length does not match the packet");
        }
        if (d[6] != proto) {
            PyErr_Format(MalformedPacket, "IPv6 next header %u does not match gso_type",
                         (unsigned)d[6]);
            return NULL;
        }
        addr_sum = be_sum(d + 8, 32);
        ihl = 40;
    }
    else {
        PyErr_Format(MalformedPacket, "IP version %u in a GSO packet", (unsigned)(d[0] >> 4));
        return NULL;
    }

    if (tcp) {
        unsigned doff;
        if (ihl + 20 > n) {
            return malformed("truncated TCP header");
        }
        doff = d[ihl + 12] >> 4;
        if (doff < 5) {
            PyErr_Format(MalformedPacket, "TCP data offset %u < 5", doff);
            return NULL;
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
    /* The headers' sums once, with the fields that change per segment
     * zeroed (IPv4: total length, ID, checksum; TCP: sequence number, flags,
     * checksum; UDP: length, checksum); each segment adds its own values.
     * Summing each segment's headers afresh was two short be_sum calls per
     * segment, a fifth of the split's time. */
    {
        uint8_t tmp[60 + 60];
        Py_ssize_t l4h = hlen - ihl;
        if (hlen > (Py_ssize_t)sizeof tmp) {
            /* Unreachable: IPv6 (40) or IPv4 (up to 60) plus TCP (up to 60). */
            return malformed("headers longer than IP and TCP allow");
        }
        memcpy(tmp, d, (size_t)hlen);
        if (v4) {
            tmp[2] = tmp[3] = tmp[4] = tmp[5] = tmp[10] = tmp[11] = 0;
            ip_base = be_sum(tmp, ihl);
        }
        if (tcp) {
            tmp[ihl + 4] = tmp[ihl + 5] = tmp[ihl + 6] = tmp[ihl + 7] = 0;
            tmp[ihl + 13] = 0;
        }
        else {
            tmp[ihl + 4] = tmp[ihl + 5] = 0;
        }
        tmp[ihl + csum_offset] = tmp[ihl + csum_offset + 1] = 0;
        l4_base = be_sum(tmp + ihl, l4h);
    }
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
        PyObject *seg = new_segment(hlen + plen);
        uint8_t *o;
        uint32_t c;

        if (seg == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        uint64_t l4_sum = l4_base;
        uint32_t payload_sum;

        o = (uint8_t *)PyBytes_AS_STRING(seg);
        memcpy(o, d, (size_t)hlen);
        payload_sum = copy_sum(o + hlen, d + start, plen);
        if (v4) {
            uint32_t id = (ip_id + (uint32_t)i) & M16;
            wr16(o + 2, (uint32_t)(hlen + plen));
            wr16(o + 4, id);
            wr16(o + 10, ~fold64((uint64_t)ip_base + (uint64_t)(hlen + plen) + id) & M16);
        }
        else {
            wr16(o + 4, (uint32_t)l4len);
        }
        if (tcp) {
            unsigned f = tcp_flags;
            uint32_t sq = seq + (uint32_t)(start - hlen);
            wr32(o + ihl + 4, sq);
            if (!last) {
                f &= ~(unsigned)(TCP_FIN | TCP_PSH);
            }
            if (i) {
                f &= ~(unsigned)TCP_CWR;
            }
            o[ihl + 13] = (uint8_t)f;
            /* The flags are the low byte of the 16-bit word at offset 12. */
            l4_sum += (sq >> 16) + (sq & M16) + f;
        }
        else {
            wr16(o + ihl + 4, (uint32_t)l4len);
            l4_sum += (uint64_t)l4len;
        }
        o[csum_pos] = o[csum_pos + 1] = 0;
        /* Both parts start at an even offset from the L4 header (its length
         * is a multiple of 4), so their folded sums simply add up. */
        c = ~fold64((uint64_t)addr_sum + proto + (uint64_t)l4len + l4_sum + payload_sum) & M16;
        if (!tcp && c == 0) {
            c = M16;
        }
        wr16(o + csum_pos, c);
        PyList_SET_ITEM(list, i, seg);
        start = end;
    }
    return list;
}

/* gso.split_fields once the fields are known to be in range and the packet
 * bytes are in hand.  `same` is the packet object if it is an exact bytes
 * object (returned as is when nothing changes), else NULL. */
static PyObject *
split_impl(const long long *f, const uint8_t *d, Py_ssize_t n, PyObject *same)
{
    unsigned base;
    PyObject *seg, *result;

    if (validate_fields((unsigned)f[0], (unsigned)f[1], (unsigned)f[2], (unsigned)f[3],
                        (unsigned)f[4], (unsigned)f[5], n) < 0) {
        return NULL;
    }
    base = (unsigned)f[1] & ~(unsigned)GSO_ECN;
    if (base == GSO_UDP) {
        return malformed("GSO_UDP (UFO) cannot be segmented");
    }
    if (base != GSO_NONE) {
        return segment(base, (Py_ssize_t)f[3], (Py_ssize_t)f[4], (Py_ssize_t)f[5], d, n);
    }
    if (f[0] & NEEDS_CSUM) {
        Py_ssize_t cs = (Py_ssize_t)f[4], pos = cs + (Py_ssize_t)f[5];
        uint32_t c;
        uint8_t *o;
        /* validate_fields checked pos + 2 <= n */
        seg = PyBytes_FromStringAndSize((const char *)d, n);
        if (seg == NULL) {
            return NULL;
        }
        o = (uint8_t *)PyBytes_AS_STRING(seg);
        /* The field holds the pseudo-header sum and is summed with the
         * rest; a 0 result goes out as 0xFFFF, as the kernel writes it. */
        c = ~be_sum(o + cs, n - cs) & M16;
        wr16(o + pos, c ? c : M16);
    }
    else if (same != NULL) {
        seg = same;
        Py_INCREF(seg);
    }
    else {
        seg = PyBytes_FromStringAndSize((const char *)d, n);
        if (seg == NULL) {
            return NULL;
        }
    }
    result = PyList_New(1);
    if (result == NULL) {
        Py_DECREF(seg);
        return NULL;
    }
    PyList_SET_ITEM(result, 0, seg);
    return result;
}

static PyObject *
py_split(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    static const char *names[6] = {"flags",    "gso_type",   "hdr_len",
                                   "gso_size", "csum_start", "csum_offset"};
    static const long long maxes[6] = {0xFF, 0xFF, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF};
    long long f[6];
    Py_buffer view;
    PyObject *owned = NULL, *result;
    const uint8_t *d;
    Py_ssize_t n;
    int i;

    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "split(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, "
                        "packet) takes exactly 7 arguments");
        return NULL;
    }
    /* The reference converts the packet with bytes() before looking at the
     * header, so a non-buffer packet fails first there too. */
    if (get_packet(args[6], 0, &owned, &view, &d, &n) < 0) {
        return NULL;
    }
    for (i = 0; i < 6; i++) {
        f[i] = int_in_range(args[i], maxes[i], MalformedPacket, names[i],
                            "virtio header field out of range");
        if (f[i] < 0) {
            put_packet(owned, &view);
            return NULL;
        }
    }
    result = split_impl(f, d, n, owned);
    put_packet(owned, &view);
    return result;
}

/* split_impl for one whole TUN read of n >= VIRTIO_NET_HDR_LEN bytes: the
 * virtio header, then the packet. */
static PyObject *
split_read(const uint8_t *d, Py_ssize_t n)
{
    long long f[6];
    uint16_t u[4];

    /* struct "=BBHHHH": native byte order, no padding */
    memcpy(u, d + 2, 8);
    f[0] = d[0];
    f[1] = d[1];
    f[2] = u[0];
    f[3] = u[1];
    f[4] = u[2];
    f[5] = u[3];
    return split_impl(f, d + VIRTIO_NET_HDR_LEN, n - VIRTIO_NET_HDR_LEN, NULL);
}

/* gso.split_with_header(buf) */
static PyObject *
py_split_with_header(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs,
                     PyObject *kwnames)
{
    static const char *const names[] = {"buf"};
    PyObject *buf = NULL, *result;
    Py_buffer view;

    if (kwnames == NULL && nargs == 1) {
        buf = args[0];
    }
    else if (parse_args("split_with_header", names, 1, 1, args, nargs, kwnames, &buf) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE) != 0) {
        /* Not a contiguous buffer: let the reference decide what it is. */
        PyErr_Clear();
        return call_reference("trio_tun.offload.gso", "split_with_header", &buf, 1, NULL);
    }
    if (view.len < VIRTIO_NET_HDR_LEN) {
        PyBuffer_Release(&view);
        return malformed("virtio header needs 10 bytes");
    }
    result = split_read((const uint8_t *)view.buf, view.len);
    PyBuffer_Release(&view);
    return result;
}

/* ------------------------------------------------------------------ */
/* GRO: classifying one packet (gro.parse)                             */
/* ------------------------------------------------------------------ */

/* Flow key: protocol, addresses, ports (13 bytes for IPv4, 37 for IPv6). */
#define KEY_MAX 37

typedef struct {
    int kind;
    int v6;
    Py_ssize_t ihl, hlen, plen; /* TCP/UDP kinds only */
    uint32_t seq, ip_id;        /* TCP/UDP kinds only */
    int id_free;                /* TCP/UDP kinds only */
    unsigned psh;               /* TCP kind only */
    unsigned klen;              /* 0 for OTHER and BARRIER */
    uint8_t key[KEY_MAX];
} gro_parsed;

static int
ipv6_ext_header(unsigned proto)
{
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
            return 1;
        default:
            return 0;
    }
}

/* gro.parse without building the tuple: 0, or -1 with MalformedPacket set.
 * With `segment` set the packet is a Segment, whose checksums (IPv4 header
 * and L4) are known to be right: they are not summed again. */
static int
gro_classify(const uint8_t *d, Py_ssize_t n, gro_parsed *p, int segment)
{
    Py_ssize_t ihl, total, l4len, thl, plen;
    unsigned version, proto;
    uint32_t addr_sum;

    memset(p, 0, offsetof(gro_parsed, key));
    if (n == 0) {
        malformed("empty packet");
        return -1;
    }
    version = d[0] >> 4;
    if (version == 4) {
        if (n < 20) {
            malformed("truncated IPv4 header");
            return -1;
        }
        ihl = (Py_ssize_t)(d[0] & 0x0F) * 4;
        if (ihl < 20) {
            PyErr_Format(MalformedPacket, "IPv4 header length %zd < 20", ihl);
            return -1;
        }
        total = (Py_ssize_t)rd16(d + 2);
        if (total < ihl || total > n) {
            malformed("IPv4 total length outside the packet");
            return -1;
        }
        proto = d[9];
        if (proto != PROTO_TCP && proto != PROTO_UDP) {
            return 0;
        }
        if ((d[6] & 0x3F) || d[7] || total - ihl < 4) {
            /* Only the first fragment has ports, so we cannot tell the flow. */
            p->kind = KIND_BARRIER;
            return 0;
        }
        p->kind = KIND_SOLO;
        p->klen = 13;
        p->key[0] = d[9];
        memcpy(p->key + 1, d + 12, 8);
        memcpy(p->key + 9, d + ihl, 4);
        /* A Segment's header checksum is split's own, like its L4 one. */
        if (ihl != 20 || total != n || (!segment && be_sum(d, 20) != M16)) {
            return 0;
        }
        /* Only the L4 checksum check needs the addresses' sum. */
        addr_sum = segment ? 0 : be_sum(d + 12, 8);
        p->ip_id = rd16(d + 4);
        p->id_free = (d[6] & 0x40) ? 1 : 0;
    }
    else if (version == 6) {
        Py_ssize_t pl;
        if (n < 40) {
            malformed("truncated IPv6 header");
            return -1;
        }
        pl = (Py_ssize_t)rd16(d + 4);
        if (40 + pl > n) {
            malformed("IPv6 payload length past the packet");
            return -1;
        }
        proto = d[6];
        if (proto != PROTO_TCP && proto != PROTO_UDP) {
            p->kind = ipv6_ext_header(proto) ? KIND_BARRIER : KIND_OTHER;
            return 0;
        }
        if (pl < 4) {
            p->kind = KIND_BARRIER;
            return 0;
        }
        ihl = 40;
        total = 40 + pl;
        p->kind = KIND_SOLO;
        p->klen = 37;
        p->key[0] = d[6];
        memcpy(p->key + 1, d + 8, 36);
        if (total != n) {
            return 0;
        }
        addr_sum = segment ? 0 : be_sum(d + 8, 32);
        p->ip_id = 0;
        p->id_free = 1;
        p->v6 = 1;
    }
    else {
        PyErr_Format(MalformedPacket, "IP version %u", version);
        return -1;
    }

    /* From here on total == n. */
    l4len = total - ihl;
    if (proto == PROTO_TCP) {
        unsigned flags;
        if (l4len < 20) {
            return 0;
        }
        thl = (Py_ssize_t)(d[ihl + 12] >> 4) * 4;
        flags = d[ihl + 13];
        plen = l4len - thl;
        /* Only plain data segments. */
        if (thl < 20 || plen <= 0 || (flags != TCP_ACK && flags != (TCP_ACK | TCP_PSH))) {
            return 0;
        }
    }
    else {
        thl = 8;
        plen = l4len - 8;
        /* Checksum 0 is "none" for IPv4 (unverifiable) and invalid for IPv6. */
        if (plen <= 0 || (Py_ssize_t)rd16(d + ihl + 4) != l4len ||
            !(d[ihl + 6] || d[ihl + 7])) {
            return 0;
        }
    }
    if (!segment &&
        fold64((uint64_t)addr_sum + proto + (uint64_t)l4len + be_sum(d + ihl, l4len)) != M16) {
        return 0;
    }
    p->ihl = ihl;
    p->hlen = ihl + thl;
    p->plen = plen;
    if (proto == PROTO_TCP) {
        p->kind = KIND_TCP;
        p->seq = rd32(d + ihl + 4);
        p->psh = d[ihl + 13] & TCP_PSH;
    }
    else {
        p->kind = KIND_UDP;
    }
    return 0;
}

/* The header bytes that must be equal between two segments merged together
 * (gro.parse's match key), compared in place: a and b are TCP/UDP packets of
 * one flow key (so one IP version and one IP header length). */
static int
same_match(const uint8_t *a, Py_ssize_t a_thl, const uint8_t *b, Py_ssize_t b_thl,
           Py_ssize_t ihl, int v6, int tcp)
{
    if (v6) {
        /* version, traffic class, flow label; hop limit */
        if (memcmp(a, b, 4) != 0 || a[7] != b[7]) {
            return 0;
        }
    }
    else if (a[1] != b[1] || a[6] != b[6] || a[8] != b[8]) {
        /* TOS; flags and fragment offset high bits; TTL */
        return 0;
    }
    if (!tcp) {
        return 1;
    }
    if (a_thl != b_thl) {
        return 0;
    }
    a += ihl;
    b += ihl;
    /* ACK number and data offset; window; urgent pointer and options */
    return memcmp(a + 8, b + 8, 5) == 0 && a[14] == b[14] && a[15] == b[15] &&
           memcmp(a + 18, b + 18, (size_t)(a_thl - 18)) == 0;
}

/* gro.parse's match key as bytes. */
static PyObject *
match_bytes(const uint8_t *d, const gro_parsed *p)
{
    uint8_t m[5 + 5 + 2 + 60];
    Py_ssize_t len;
    Py_ssize_t ihl = p->ihl, thl = p->hlen - p->ihl;

    if (p->v6) {
        memcpy(m, d, 4);
        m[4] = d[7];
        len = 5;
    }
    else {
        m[0] = d[1];
        m[1] = d[6];
        m[2] = d[8];
        len = 3;
    }
    if (p->kind == KIND_TCP) {
        memcpy(m + len, d + ihl + 8, 5);
        memcpy(m + len + 5, d + ihl + 14, 2);
        memcpy(m + len + 7, d + ihl + 18, (size_t)(thl - 18));
        len += 7 + thl - 18;
    }
    return PyBytes_FromStringAndSize((const char *)m, len);
}

static PyObject *
py_gro_parse(PyObject *Py_UNUSED(self), PyObject *packet)
{
    Py_buffer view;
    PyObject *owned, *key, *match;
    const uint8_t *d;
    Py_ssize_t n;
    gro_parsed p;
    int r;

    if (get_packet(packet, 0, &owned, &view, &d, &n) < 0) {
        return NULL;
    }
    r = gro_classify(d, n, &p, is_segment(owned));
    if (r < 0) {
        put_packet(owned, &view);
        return NULL;
    }
    key = PyBytes_FromStringAndSize((const char *)p.key, p.klen);
    if (p.kind == KIND_TCP || p.kind == KIND_UDP) {
        match = match_bytes(d, &p);
    }
    else {
        match = PyBytes_FromStringAndSize(NULL, 0);
    }
    put_packet(owned, &view);
    if (key == NULL || match == NULL) {
        Py_XDECREF(key);
        Py_XDECREF(match);
        return NULL;
    }
    if (p.kind != KIND_TCP && p.kind != KIND_UDP) {
        return Py_BuildValue("(iNNiiiiiii)", p.kind, key, match, 0, 0, 0, 0, 0, 0, 0);
    }
    return Py_BuildValue("(iNNnnnkkiI)", p.kind, key, match, p.ihl, p.hlen, p.plen,
                         (unsigned long)p.seq, (unsigned long)p.ip_id, p.id_free, p.psh);
}

/* ------------------------------------------------------------------ */
/* GRO: assembling a super-packet (gro.build)                          */
/* ------------------------------------------------------------------ */

/* Fill in the virtio header at o and fix up the IP and L4 headers at
 * o + VIRTIO_NET_HDR_LEN of a merged packet of `total` IP bytes, whose
 * headers and payloads are already in place. */
static void
finish_merged(uint8_t *o, Py_ssize_t ihl, Py_ssize_t hlen, Py_ssize_t total, unsigned psh,
              unsigned gso_size, int v6)
{
    uint8_t *h = o + VIRTIO_NET_HDR_LEN;
    Py_ssize_t l4len = total - ihl;
    unsigned proto, csum_offset, gso_type;
    uint32_t addr_sum;
    uint16_t vh[4];

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
    if (hlen - ihl != 8) {
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
    /* NEEDS_CSUM wants the folded, non-inverted pseudo-header sum; never 0
     * because the protocol number is not. */
    wr16(h + ihl + csum_offset, fold64((uint64_t)addr_sum + proto + (uint64_t)l4len));
    /* struct "=BBHHHH": native byte order, no padding */
    o[0] = NEEDS_CSUM;
    o[1] = (uint8_t)gso_type;
    vh[0] = (uint16_t)hlen;
    vh[1] = (uint16_t)gso_size;
    vh[2] = (uint16_t)ihl;
    vh[3] = (uint16_t)csum_offset;
    memcpy(o + 2, vh, 8);
}

/* gro.build(first, ihl, hlen, gso_size, psh, payloads) */
static PyObject *
py_gro_build(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    long long ihl, hlen, gso_size, psh;
    Py_buffer first;
    PyObject *first_tmp, *seq = NULL, *result = NULL;
    Py_buffer *views = NULL;
    PyObject **tmps = NULL;
    Py_ssize_t count = 0, got = 0, i, total, l4len;
    int v6;
    const uint8_t *f;
    uint8_t *o, *h;

    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "build(first, ihl, hlen, gso_size, psh, payloads) takes 6 arguments");
        return NULL;
    }
    if (get_bytes(args[0], &first, &first_tmp) < 0) {
        return NULL;
    }
    f = (const uint8_t *)first.buf;
    if ((ihl = int_in_range(args[1], 0xFFFF, PyExc_ValueError, "ihl", NULL)) < 0 ||
        (hlen = int_in_range(args[2], 0xFFFF, PyExc_ValueError, "hlen", NULL)) < 0 ||
        (gso_size = int_in_range(args[3], 0xFFFF, PyExc_ValueError, "gso_size", NULL)) < 0 ||
        (psh = int_in_range(args[4], 0xFF, PyExc_ValueError, "psh", NULL)) < 0) {
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
    if (PyList_Check(seq)) {
        /* The caller's list: converting a payload that is no buffer runs
         * its code, which could shrink the list under us. */
        Py_SETREF(seq, PyList_AsTuple(seq));
        if (seq == NULL) {
            goto done;
        }
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
    finish_merged(o, (Py_ssize_t)ihl, (Py_ssize_t)hlen, total, (unsigned)psh,
                  (unsigned)gso_size, v6);
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
/* GRO: the table (gro.GroTable)                                       */
/* ------------------------------------------------------------------ */

/*
 * The state mirrors gro.GroTable.  Every packet added gets a gro_pkt; the
 * output slots are the packets that start one (`head`), in arrival order, so
 * no separate slot list is needed: a head that may grow (a super-packet under
 * construction) carries the _Item fields, and the packets merged into it hang
 * off it in a singly linked list (`next`).
 *
 * `_open` (flow key -> the flow's most recent slot, if it can still grow) is
 * an open-addressing hash table with linear probing.  Entries are never
 * deleted: popping a key sets its slot to -1.  Clearing the table (a
 * barrier, a flush) bumps the generation; entries of older generations count
 * as free, so clearing is O(1) and probing stays correct because within one
 * generation entries are only ever added.
 */

typedef struct {
    PyObject *owned; /* a bytes object, or NULL when `view` holds the data */
    Py_buffer view;
    const uint8_t *d;
    Py_ssize_t n;
    Py_ssize_t next; /* the next packet merged into the same slot, or -1 */
    Py_ssize_t hoff; /* where this packet's payload starts */
    /* Heads only: */
    int head;
    Py_ssize_t nseg; /* 0: goes out unchanged; else segments merged so far */
    Py_ssize_t last, total, ihl, hlen, gso_size;
    uint32_t next_seq, next_id;
    int tcp, v6, id_free;
    unsigned psh;
} gro_pkt;

typedef struct {
    uint32_t gen;
    uint32_t hash;
    Py_ssize_t slot; /* index of the head packet, or -1 */
    unsigned klen;
    uint8_t key[KEY_MAX];
} gro_entry;

#define GRO_SMALL_PKTS 16
#define GRO_SMALL_ENTRIES 16 /* a power of 2 */

typedef struct {
    int uso, allow_short;
    Py_ssize_t max_size;
    gro_pkt *pkts;
    Py_ssize_t npkts, cap, nheads;
    gro_entry *entries;
    size_t mask; /* number of entries - 1 */
    Py_ssize_t used;
    uint32_t gen;
    gro_pkt small_pkts[GRO_SMALL_PKTS];
    gro_entry small_entries[GRO_SMALL_ENTRIES];
} gro_state;

/* Keyed so that nobody can line up flow keys that all land in one chain. */
static uint64_t hash_seed[2] = {0x243F6A8885A308D3ull, 0x13198A2E03707344ull};

static inline uint64_t
mix64(uint64_t a, uint64_t b)
{
#ifdef __SIZEOF_INT128__
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
#else
    uint64_t x = (a ^ (b >> 29)) * 0x9E3779B97F4A7C15ull;
    return x ^ (x >> 32) ^ b;
#endif
}

static uint32_t
key_hash(const uint8_t *k, unsigned len)
{
    uint64_t h = hash_seed[0] ^ len, w;

    while (len >= 8) {
        memcpy(&w, k, 8);
        h = mix64(h ^ w, hash_seed[1] ^ 0xA0761D6478BD642Full);
        k += 8;
        len -= 8;
    }
    w = 0;
    memcpy(&w, k, len);
    h = mix64(h ^ w, hash_seed[1] ^ 0xE7037ED1A0B428DBull);
    return (uint32_t)(h ^ (h >> 32));
}

static void
gro_init(gro_state *st, int uso, Py_ssize_t max_size, int allow_short)
{
    st->uso = uso;
    st->allow_short = allow_short;
    st->max_size = max_size;
    st->pkts = st->small_pkts;
    st->npkts = st->nheads = 0;
    st->cap = GRO_SMALL_PKTS;
    st->entries = st->small_entries;
    st->mask = GRO_SMALL_ENTRIES - 1;
    st->used = 0;
    st->gen = 1;
    memset(st->small_entries, 0, sizeof(st->small_entries));
}

/* Forget every open flow. */
static void
gro_new_generation(gro_state *st)
{
    st->used = 0;
    if (++st->gen == 0) {
        memset(st->entries, 0, (st->mask + 1) * sizeof(gro_entry));
        st->gen = 1;
    }
}

/* Drop every packet. */
static void
gro_clear(gro_state *st)
{
    Py_ssize_t i;
    for (i = 0; i < st->npkts; i++) {
        put_packet(st->pkts[i].owned, &st->pkts[i].view);
    }
    st->npkts = st->nheads = 0;
    gro_new_generation(st);
}

static void
gro_free(gro_state *st)
{
    gro_clear(st);
    if (st->pkts != st->small_pkts) {
        PyMem_Free(st->pkts);
        st->pkts = st->small_pkts;
        st->cap = GRO_SMALL_PKTS;
    }
    if (st->entries != st->small_entries) {
        PyMem_Free(st->entries);
        st->entries = st->small_entries;
        st->mask = GRO_SMALL_ENTRIES - 1;
        memset(st->small_entries, 0, sizeof(st->small_entries));
    }
}

/* Room for `need` packets.  Moving a gro_pkt is fine: a PyBUF_SIMPLE
 * Py_buffer holds no pointer into itself. */
static int
gro_reserve(gro_state *st, Py_ssize_t need)
{
    Py_ssize_t cap;
    gro_pkt *pkts;

    if (need <= st->cap) {
        return 0;
    }
    cap = st->cap * 2 > need ? st->cap * 2 : need;
    if ((size_t)cap > PY_SSIZE_T_MAX / sizeof(gro_pkt)) {
        PyErr_NoMemory();
        return -1;
    }
    if (st->pkts == st->small_pkts) {
        pkts = PyMem_Malloc((size_t)cap * sizeof(gro_pkt));
        if (pkts != NULL) {
            memcpy(pkts, st->small_pkts, (size_t)st->npkts * sizeof(gro_pkt));
        }
    }
    else {
        pkts = PyMem_Realloc(st->pkts, (size_t)cap * sizeof(gro_pkt));
    }
    if (pkts == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    st->pkts = pkts;
    st->cap = cap;
    return 0;
}

/* The entry holding `key` in the current generation, or the free entry where
 * it would go.  The table is never more than half full, so this ends. */
static gro_entry *
gro_probe(gro_state *st, const uint8_t *key, unsigned klen, uint32_t hash)
{
    size_t i = hash & st->mask;
    for (;;) {
        gro_entry *e = &st->entries[i];
        if (e->gen != st->gen) {
            return e;
        }
        if (e->hash == hash && e->klen == klen && memcmp(e->key, key, klen) == 0) {
            return e;
        }
        i = (i + 1) & st->mask;
    }
}

/* Room for one more key. */
static int
gro_reserve_entry(gro_state *st)
{
    size_t n = st->mask + 1, i;
    gro_entry *old = st->entries, *fresh;
    uint32_t gen = st->gen;

    if ((size_t)(st->used + 1) * 2 <= n) {
        return 0;
    }
    if (n > PY_SSIZE_T_MAX / 2 / sizeof(gro_entry)) {
        PyErr_NoMemory();
        return -1;
    }
    fresh = PyMem_Calloc(n * 2, sizeof(gro_entry));
    if (fresh == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    st->entries = fresh;
    st->mask = n * 2 - 1;
    st->gen = 1;
    for (i = 0; i < n; i++) {
        if (old[i].gen == gen) {
            gro_entry *e = gro_probe(st, old[i].key, old[i].klen, old[i].hash);
            *e = old[i];
            e->gen = 1;
        }
    }
    if (old != st->small_entries) {
        PyMem_Free(old);
    }
    return 0;
}

/* Whether segment `pk` (parsed as p) is exactly what segmenting the slot
 * headed by h further would produce next. */
static inline int
gro_can_merge(const gro_state *st, const gro_pkt *h, const gro_pkt *pk, const gro_parsed *p)
{
    return same_match(h->d, h->hlen - h->ihl, pk->d, p->hlen - p->ihl, h->ihl, h->v6,
                      h->tcp) &&
           p->plen <= h->gso_size && h->total + p->plen <= st->max_size &&
           (h->id_free || p->ip_id == h->next_id) &&
           (h->tcp ? p->seq == h->next_seq : h->nseg < UDP_MAX_SEGMENTS) &&
           (st->allow_short || p->plen == h->gso_size);
}

/* GroTable.add's decisions for packet i, already parsed and stored.  Cannot
 * fail: the caller reserved room for one more key. */
static void
gro_commit(gro_state *st, Py_ssize_t i, const gro_parsed *p)
{
    gro_pkt *pk = &st->pkts[i];
    gro_entry *e;
    uint32_t hash;
    Py_ssize_t slot = -1;
    int found;

    pk->head = 1;
    pk->nseg = 0;
    pk->next = -1;
    st->nheads++;
    if (p->kind == KIND_OTHER) {
        return;
    }
    if (p->kind == KIND_BARRIER) {
        /* Could belong to any open flow: nothing may be merged past it. */
        gro_new_generation(st);
        return;
    }
    hash = key_hash(p->key, p->klen);
    e = gro_probe(st, p->key, p->klen, hash);
    found = e->gen == st->gen;
    if (found) {
        slot = e->slot;
        e->slot = -1;
    }
    if (p->kind == KIND_SOLO || (p->kind == KIND_UDP && !st->uso)) {
        return;
    }
    if (slot >= 0) {
        gro_pkt *h = &st->pkts[slot];
        if (gro_can_merge(st, h, pk, p)) {
            st->pkts[h->last].next = i;
            h->last = i;
            pk->head = 0;
            pk->hoff = p->hlen;
            st->nheads--;
            h->nseg++;
            h->total += p->plen;
            h->next_seq = p->seq + (uint32_t)p->plen;
            h->next_id = (p->ip_id + 1) & M16;
            if (p->psh || p->plen < h->gso_size) {
                /* PSH or a short segment is where a sender's burst ends. */
                h->psh = p->psh;
            }
            else {
                e->slot = slot;
            }
            return;
        }
    }
    /* Otherwise it starts the flow's next slot (any previous one is closed). */
    if (p->psh) {
        return;
    }
    pk->nseg = 1;
    pk->last = i;
    pk->hoff = p->hlen;
    pk->ihl = p->ihl;
    pk->hlen = p->hlen;
    pk->gso_size = p->plen;
    pk->total = p->hlen + p->plen;
    pk->tcp = p->kind == KIND_TCP;
    pk->v6 = p->v6;
    pk->next_seq = p->seq + (uint32_t)p->plen;
    pk->next_id = (p->ip_id + 1) & M16;
    pk->id_free = p->id_free;
    pk->psh = 0;
    if (!found) {
        e->gen = st->gen;
        e->hash = hash;
        e->klen = p->klen;
        memcpy(e->key, p->key, p->klen);
        st->used++;
    }
    e->slot = i;
}

/* GroTable.add: 0, or -1 with an exception set and the state unchanged. */
static int
gro_add(gro_state *st, PyObject *obj, int copy)
{
    gro_pkt tmp;
    gro_parsed p;

    /* Everything that may run Python code (bytes()) comes first. */
    if (get_packet(obj, copy, &tmp.owned, &tmp.view, &tmp.d, &tmp.n) < 0) {
        return -1;
    }
    if (gro_classify(tmp.d, tmp.n, &p, is_segment(tmp.owned)) < 0 ||
        gro_reserve(st, st->npkts + 1) < 0 ||
        (p.klen != 0 && gro_reserve_entry(st) < 0)) {
        put_packet(tmp.owned, &tmp.view);
        return -1;
    }
    st->pkts[st->npkts] = tmp;
    st->npkts++;
    gro_commit(st, st->npkts - 1, &p);
    return 0;
}

/* One output buffer: virtio header + packet. */
static PyObject *
gro_output(const gro_state *st, Py_ssize_t i)
{
    const gro_pkt *h = &st->pkts[i];
    PyObject *b;
    uint8_t *o, *q;
    Py_ssize_t j;

    if (h->nseg <= 1) {
        b = PyBytes_FromStringAndSize(NULL, VIRTIO_NET_HDR_LEN + h->n);
        if (b == NULL) {
            return NULL;
        }
        o = (uint8_t *)PyBytes_AS_STRING(b);
        memset(o, 0, VIRTIO_NET_HDR_LEN);
        memcpy(o + VIRTIO_NET_HDR_LEN, h->d, (size_t)h->n);
        return b;
    }
    /* Every merged packet is hlen + payload bytes long, and their payloads
     * add up to total - hlen, which max_size bounds by 65535. */
    b = PyBytes_FromStringAndSize(NULL, VIRTIO_NET_HDR_LEN + h->total);
    if (b == NULL) {
        return NULL;
    }
    o = (uint8_t *)PyBytes_AS_STRING(b);
    memcpy(o + VIRTIO_NET_HDR_LEN, h->d, (size_t)h->hlen);
    q = o + VIRTIO_NET_HDR_LEN + h->hlen;
    for (j = i; j >= 0; j = st->pkts[j].next) {
        const gro_pkt *pk = &st->pkts[j];
        memcpy(q, pk->d + pk->hoff, (size_t)(pk->n - pk->hoff));
        q += pk->n - pk->hoff;
    }
    finish_merged(o, h->ihl, h->hlen, h->total, h->psh, (unsigned)h->gso_size, h->v6);
    return b;
}

/* GroTable.flush: append every output buffer to `out`, then empty the table.
 * On failure the table is left as it was. */
static int
gro_flush(gro_state *st, PyObject *out)
{
    Py_ssize_t i;

    for (i = 0; i < st->npkts; i++) {
        PyObject *b;
        int r;
        if (!st->pkts[i].head) {
            continue;
        }
        b = gro_output(st, i);
        if (b == NULL) {
            return -1;
        }
        r = PyList_Append(out, b);
        Py_DECREF(b);
        if (r < 0) {
            return -1;
        }
    }
    gro_clear(st);
    return 0;
}

/* max_size as GroTable checks it; 0 with an exception set when invalid. */
static Py_ssize_t
max_size_arg(PyObject *obj)
{
    int overflow = 0;
    long long v;

    if (obj == NULL) {
        return 65535;
    }
    v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        return 0;
    }
    if (overflow || v < 1 || v > 65535) {
        PyErr_Format(PyExc_ValueError, "max_size must be in 1..65535, got %R", obj);
        return 0;
    }
    return (Py_ssize_t)v;
}

/* Arguments whose use by the reference (truth value, comparisons) runs no
 * Python code of their own. */
static int
plain_flag(PyObject *obj)
{
    return obj == NULL || obj == Py_None || PyBool_Check(obj) || PyLong_CheckExact(obj);
}

static int
plain_int(PyObject *obj)
{
    return obj == NULL || PyBool_Check(obj) || PyLong_CheckExact(obj);
}

static int
flag_arg(PyObject *obj, int dflt)
{
    return obj == NULL ? dflt : PyObject_IsTrue(obj);
}

/* gro.coalesce(packets, *, uso=False, max_size=65535, allow_short_last=True) */
static PyObject *
py_coalesce(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"packets", "uso", "max_size", "allow_short_last"};
    PyObject *v[4] = {NULL, NULL, NULL, NULL};
    PyObject *packets, *out = NULL, *it = NULL, *item;
    gro_state st;
    Py_ssize_t max_size, i, n;
    int uso, allow_short, copy, is_list;

    if (kwnames == NULL && nargs == 1) {
        v[0] = args[0];
    }
    else if (parse_args("coalesce", names, 1, 4, args, nargs, kwnames, v) < 0) {
        return NULL;
    }
    packets = v[0];
    if (!plain_flag(v[1]) || !plain_int(v[2]) || !plain_flag(v[3])) {
        /* Arguments with behaviour of their own: the reference knows best. */
        return call_reference("trio_tun.offload.gro", "coalesce", args, (size_t)nargs,
                              kwnames);
    }
    max_size = max_size_arg(v[2]);
    if (max_size == 0) {
        return NULL;
    }
    uso = flag_arg(v[1], 0);
    allow_short = flag_arg(v[3], 1);

    /* Created first: nothing below allocates a container until the packets
     * are copied out, so no garbage collection (and no finalizer that could
     * write to a bytearray we are reading) runs in between. */
    out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    gro_init(&st, uso, max_size, allow_short);
    is_list = PyList_CheckExact(packets);
    if (is_list || PyTuple_CheckExact(packets)) {
        n = is_list ? PyList_GET_SIZE(packets) : PyTuple_GET_SIZE(packets);
        /* bytearray and memoryview items are read in place, which is only
         * the same as the reference's copy if no Python code can write to
         * them before we are done: so only when every item is plain. */
        copy = 0;
        for (i = 0; i < n && !copy; i++) {
            item = is_list ? PyList_GET_ITEM(packets, i) : PyTuple_GET_ITEM(packets, i);
            copy = !(plain_bytes(item) || PyByteArray_CheckExact(item) ||
                     PyMemoryView_Check(item));
        }
        if (gro_reserve(&st, n) < 0) {
            goto error;
        }
        /* With copy set, bytes() may run code that changes the list: check
         * the length each time, as a list iterator does. */
        for (i = 0; i < (is_list ? PyList_GET_SIZE(packets) : n); i++) {
            int r;
            item = is_list ? PyList_GET_ITEM(packets, i) : PyTuple_GET_ITEM(packets, i);
            Py_INCREF(item);
            r = gro_add(&st, item, copy);
            Py_DECREF(item);
            if (r < 0) {
                goto error;
            }
        }
    }
    else {
        /* Any other iterable runs its own code between items. */
        it = PyObject_GetIter(packets);
        if (it == NULL) {
            goto error;
        }
        while ((item = PyIter_Next(it)) != NULL) {
            int r = gro_add(&st, item, 1);
            Py_DECREF(item);
            if (r < 0) {
                goto error;
            }
        }
        if (PyErr_Occurred()) {
            goto error;
        }
        Py_CLEAR(it);
    }
    if (gro_flush(&st, out) < 0) {
        goto error;
    }
    gro_free(&st);
    return out;
error:
    Py_XDECREF(it);
    gro_free(&st);
    Py_DECREF(out);
    return NULL;
}

/* The table as a type, for callers that add packets one at a time.  It
 * always copies what it is given (bytes objects are immutable and merely
 * referenced), so the caller may reuse its buffers after add() returns. */
typedef struct {
    PyObject_HEAD
    gro_state st;
} GroTableObject;

static PyObject *
GroTable_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"uso", "max_size", "allow_short_last", NULL};
    PyObject *uso_o = NULL, *max_o = NULL, *short_o = NULL;
    GroTableObject *self;
    Py_ssize_t max_size;
    int uso, allow_short;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$OOO:GroTable", kwlist, &uso_o, &max_o,
                                     &short_o)) {
        return NULL;
    }
    if (max_o != NULL && !PyLong_Check(max_o)) {
        PyErr_SetString(PyExc_TypeError, "max_size must be an int");
        return NULL;
    }
    max_size = max_size_arg(max_o);
    if (max_size == 0) {
        return NULL;
    }
    if ((uso = flag_arg(uso_o, 0)) < 0 || (allow_short = flag_arg(short_o, 1)) < 0) {
        return NULL;
    }
    self = (GroTableObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    gro_init(&self->st, uso, max_size, allow_short);
    return (PyObject *)self;
}

static void
GroTable_dealloc(GroTableObject *self)
{
    gro_free(&self->st);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
GroTable_add(GroTableObject *self, PyObject *packet)
{
    if (gro_add(&self->st, packet, 1) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
GroTable_flush(GroTableObject *self, PyObject *Py_UNUSED(unused))
{
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    if (gro_flush(&self->st, out) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static Py_ssize_t
GroTable_len(GroTableObject *self)
{
    return self->st.npkts;
}

static PyObject *
GroTable_pending_packets(GroTableObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->st.npkts);
}

static PyObject *
GroTable_pending_buffers(GroTableObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->st.nheads);
}

static PyMethodDef GroTable_methods[] = {
    {"add", (PyCFunction)GroTable_add, METH_O,
     "add($self, packet, /)\n--\n\n"
     "Queue one IP packet (IPv4 or IPv6, any protocol) to be coalesced.\n\n"
     "Raises MalformedPacket, leaving the table unchanged, if packet is not an\n"
     "IP packet whose header lengths fit in it."},
    {"flush", (PyCFunction)GroTable_flush, METH_NOARGS,
     "flush($self, /)\n--\n\n"
     "Return the buffers to write (each a virtio header and one, possibly\n"
     "merged, packet) for everything added since the last flush, and empty\n"
     "the table."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef GroTable_getset[] = {
    {"pending_packets", (getter)GroTable_pending_packets, NULL,
     "Number of input packets held until the next flush.", NULL},
    {"pending_buffers", (getter)GroTable_pending_buffers, NULL,
     "Number of buffers the next flush would return.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods GroTable_as_sequence = {
    .sq_length = (lenfunc)GroTable_len,
};

static PyTypeObject GroTableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "trio_tun.offload._speedups.GroTable",
    .tp_basicsize = sizeof(GroTableObject),
    .tp_dealloc = (destructor)GroTable_dealloc,
    .tp_as_sequence = &GroTable_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "GroTable(*, uso=False, max_size=65535, allow_short_last=True)\n--\n\n"
              "Collects packets for one writer and coalesces them into super-packets.\n\n"
              "The state and logic of trio_tun.offload.gro.GroTable, in C: add() each\n"
              "packet of a batch, then flush() for the buffers to write.  uso merges\n"
              "UDP datagrams too, max_size bounds a merged IP packet, and\n"
              "allow_short_last=False merges only equal-sized segments.",
    .tp_methods = GroTable_methods,
    .tp_getset = GroTable_getset,
    .tp_new = GroTable_new,
};

/* ------------------------------------------------------------------ */
/* sendmmsg / recvmmsg (Linux): batched UDP syscalls for trio_tun.udp  */
/* ------------------------------------------------------------------ */

/* Each has a pure-Python twin in trio_tun.udp (a loop of sendmsg/recvmsg_into)
 * and the tests compare the two through a real kernel.  The GIL is released
 * around the syscall itself: every buffer is pinned by a Py_buffer (a
 * bytearray can't be resized while exported) or is an immutable bytes object
 * we hold a reference to. */
#ifdef __linux__
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>

#define MMSG_MAX 1024         /* the kernel's UIO_MAXIOV caps vlen too */
#define MMSG_SOL_UDP 17
#define MMSG_UDP_SEGMENT 103

/* sendmmsg(fd, messages, /) -> int
 *
 * messages: a sequence of (buffers, gso_size, sockaddr) where buffers is a
 * sequence of bytes-like objects sent as one datagram (one iovec each),
 * gso_size 0 or the UDP_SEGMENT size (1..65535), sockaddr None (connected
 * socket) or the raw struct sockaddr as bytes.  Sends at most MMSG_MAX
 * messages; returns how many the kernel took, raises OSError when it took
 * none (BlockingIOError when the socket buffer is full). */
static PyObject *
py_sendmmsg(PyObject *Py_UNUSED(self), PyObject *args)
{
    int fd, r = 0, saved_errno = 0;
    PyObject *messages, *seq = NULL, *result = NULL;
    PyObject **keep = NULL;         /* 2 per message: buffers tuple, address */
    Py_buffer *views = NULL;
    struct mmsghdr *hdrs = NULL;
    struct iovec *iov = NULL;
    char *control = NULL;
    Py_ssize_t n, i, j, total = 0, nviews = 0, nkeep = 0;
    const size_t cspace = CMSG_SPACE(sizeof(uint16_t));

    if (!PyArg_ParseTuple(args, "iO:sendmmsg", &fd, &messages)) {
        return NULL;
    }
    seq = PySequence_Fast(messages, "messages must be a sequence");
    if (seq == NULL) {
        return NULL;
    }
    if (PyList_Check(seq)) {
        /* The caller's list: code run below (iterating a message's buffers,
         * __index__) could change it and free the messages we hold. */
        Py_SETREF(seq, PyList_AsTuple(seq));
        if (seq == NULL) {
            return NULL;
        }
    }
    n = PySequence_Fast_GET_SIZE(seq);
    if (n > MMSG_MAX) {
        n = MMSG_MAX;
    }
    if (n == 0) {
        Py_DECREF(seq);
        return PyLong_FromLong(0);
    }
    keep = PyMem_Calloc((size_t)(2 * n), sizeof(PyObject *));
    hdrs = PyMem_Calloc((size_t)n, sizeof(struct mmsghdr));
    control = PyMem_Calloc((size_t)n, cspace);
    if (keep == NULL || hdrs == NULL || control == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    /* Snapshot every message first (tuples are immutable), so that nothing a
     * buffer export might run can change what we send or free it under us. */
    for (i = 0; i < n; i++) {
        PyObject *msg = PySequence_Fast_GET_ITEM(seq, i), *bufs, *addr;
        long gso;

        if (!PyTuple_Check(msg) || PyTuple_GET_SIZE(msg) != 3) {
            PyErr_SetString(PyExc_TypeError,
                            "each message must be a (buffers, gso_size, sockaddr) tuple");
            goto done;
        }
        bufs = PySequence_Tuple(PyTuple_GET_ITEM(msg, 0));
        if (bufs == NULL) {
            goto done;
        }
        keep[nkeep++] = bufs;
        total += PyTuple_GET_SIZE(bufs);
        gso = PyLong_AsLong(PyTuple_GET_ITEM(msg, 1));
        if (gso == -1 && PyErr_Occurred()) {
            goto done;
        }
        if (gso < 0 || gso > 0xFFFF) {
            PyErr_SetString(PyExc_ValueError, "gso_size must be in 0..65535");
            goto done;
        }
        addr = PyTuple_GET_ITEM(msg, 2);
        if (addr != Py_None) {
            if (!PyBytes_Check(addr) || PyBytes_GET_SIZE(addr) == 0 ||
                (size_t)PyBytes_GET_SIZE(addr) > sizeof(struct sockaddr_storage)) {
                PyErr_SetString(PyExc_TypeError, "sockaddr must be None or a raw sockaddr (bytes)");
                goto done;
            }
            Py_INCREF(addr);
            keep[nkeep++] = addr;
            hdrs[i].msg_hdr.msg_name = PyBytes_AS_STRING(addr);
            hdrs[i].msg_hdr.msg_namelen = (socklen_t)PyBytes_GET_SIZE(addr);
        }
        if (gso > 0) {
            char *c = control + (size_t)i * cspace;
            struct cmsghdr *cm = (struct cmsghdr *)c;
            uint16_t size = (uint16_t)gso;

            cm->cmsg_level = MMSG_SOL_UDP;
            cm->cmsg_type = MMSG_UDP_SEGMENT;
            cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            memcpy(CMSG_DATA(cm), &size, sizeof(size));
            hdrs[i].msg_hdr.msg_control = c;
            hdrs[i].msg_hdr.msg_controllen = cspace;
        }
    }
    iov = PyMem_Calloc((size_t)(total ? total : 1), sizeof(struct iovec));
    views = PyMem_Calloc((size_t)(total ? total : 1), sizeof(Py_buffer));
    if (iov == NULL || views == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    {
        Py_ssize_t k = 0, m = 0;

        for (i = 0; i < n; i++) {
            PyObject *bufs = keep[m++];
            Py_ssize_t count = PyTuple_GET_SIZE(bufs);

            if (hdrs[i].msg_hdr.msg_name != NULL) {
                m++;
            }
            hdrs[i].msg_hdr.msg_iov = iov + k;
            hdrs[i].msg_hdr.msg_iovlen = (size_t)count;
            for (j = 0; j < count; j++, k++) {
                if (PyObject_GetBuffer(PyTuple_GET_ITEM(bufs, j), &views[k], PyBUF_SIMPLE) < 0) {
                    goto done;
                }
                nviews++;
                iov[k].iov_base = views[k].buf;
                iov[k].iov_len = (size_t)views[k].len;
            }
        }
    }
    Py_BEGIN_ALLOW_THREADS
    r = sendmmsg(fd, hdrs, (unsigned int)n, MSG_DONTWAIT | MSG_NOSIGNAL);
    saved_errno = errno;
    Py_END_ALLOW_THREADS
    if (r < 0) {
        errno = saved_errno;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    result = PyLong_FromLong(r);
done:
    for (i = 0; i < nviews; i++) {
        PyBuffer_Release(&views[i]);
    }
    for (i = 0; i < nkeep; i++) {
        Py_DECREF(keep[i]);
    }
    PyMem_Free(views);
    PyMem_Free(iov);
    PyMem_Free(control);
    PyMem_Free(hdrs);
    PyMem_Free(keep);
    Py_DECREF(seq);
    return result;
}

/* The address as socket.recvmsg reports it: (host, port) for IPv4,
 * (host, port, flowinfo, scope_id) for IPv6, None for anything else. */
static PyObject *
mmsg_address(const struct sockaddr_storage *ss, socklen_t len)
{
    char host[INET6_ADDRSTRLEN];

    if (ss->ss_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;

        if (inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host)) == NULL) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        return Py_BuildValue("(si)", host, (int)ntohs(a->sin_port));
    }
    if (ss->ss_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;

        if (inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host)) == NULL) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        return Py_BuildValue("(siII)", host, (int)ntohs(a->sin6_port),
                             (unsigned int)ntohl(a->sin6_flowinfo),
                             (unsigned int)a->sin6_scope_id);
    }
    Py_RETURN_NONE;
}

/* recvmmsg(fd, buffer, bufsize, max_messages, ancbufsize, want_address, /)
 *     -> list[(nbytes, ancdata, msg_flags, address)]
 *
 * Message i lands in buffer[i*bufsize:(i+1)*bufsize]; each entry is what
 * socket.recvmsg_into would have returned for it (address None unless
 * want_address).  Raises OSError when nothing was received. */
static PyObject *
py_recvmmsg(PyObject *Py_UNUSED(self), PyObject *args)
{
    int fd, want_address, r = 0, saved_errno = 0;
    Py_buffer buffer;
    Py_ssize_t bufsize, count, ancbufsize, i;
    struct mmsghdr *hdrs = NULL;
    struct iovec *iov = NULL;
    struct sockaddr_storage *names = NULL;
    char *control = NULL;
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "iw*nnnp:recvmmsg", &fd, &buffer, &bufsize, &count, &ancbufsize,
                          &want_address)) {
        return NULL;
    }
    if (bufsize < 1 || count < 1 || count > MMSG_MAX || ancbufsize < 0 ||
        ancbufsize > 65536 || bufsize > buffer.len / count) {
        PyErr_SetString(PyExc_ValueError,
                        "need 1 <= max_messages <= 1024, bufsize >= 1, "
                        "0 <= ancbufsize <= 65536 and len(buffer) >= bufsize * max_messages");
        goto done;
    }
    hdrs = PyMem_Calloc((size_t)count, sizeof(struct mmsghdr));
    iov = PyMem_Calloc((size_t)count, sizeof(struct iovec));
    control = PyMem_Calloc((size_t)count, (size_t)(ancbufsize ? ancbufsize : 1));
    if (want_address) {
        names = PyMem_Calloc((size_t)count, sizeof(struct sockaddr_storage));
    }
    if (hdrs == NULL || iov == NULL || control == NULL || (want_address && names == NULL)) {
        PyErr_NoMemory();
        goto done;
    }
    for (i = 0; i < count; i++) {
        iov[i].iov_base = (char *)buffer.buf + i * bufsize;
        iov[i].iov_len = (size_t)bufsize;
        hdrs[i].msg_hdr.msg_iov = &iov[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
        if (ancbufsize) {
            hdrs[i].msg_hdr.msg_control = control + i * ancbufsize;
            hdrs[i].msg_hdr.msg_controllen = (size_t)ancbufsize;
        }
        if (want_address) {
            hdrs[i].msg_hdr.msg_name = &names[i];
            hdrs[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
        }
    }
    Py_BEGIN_ALLOW_THREADS
    r = recvmmsg(fd, hdrs, (unsigned int)count, MSG_DONTWAIT, NULL);
    saved_errno = errno;
    Py_END_ALLOW_THREADS
    if (r < 0) {
        errno = saved_errno;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    result = PyList_New(r);
    if (result == NULL) {
        goto done;
    }
    for (i = 0; i < r; i++) {
        struct msghdr *mh = &hdrs[i].msg_hdr;
        struct cmsghdr *cm;
        PyObject *anc, *addr, *entry;
        /* No control buffer (ancbufsize 0): msg_control is NULL, and even
         * NULL + 0 is undefined behaviour. */
        const char *cend =
            mh->msg_control ? (const char *)mh->msg_control + mh->msg_controllen : NULL;

        anc = PyList_New(0);
        if (anc == NULL) {
            goto fail;
        }
        for (cm = mh->msg_controllen ? CMSG_FIRSTHDR(mh) : NULL; cm != NULL;
             cm = CMSG_NXTHDR(mh, cm)) {
            const char *data = (const char *)CMSG_DATA(cm);
            Py_ssize_t len;
            PyObject *item;

            /* A truncated item reports what fits, as socket.recvmsg does. */
            if (cm->cmsg_len < CMSG_LEN(0) || data > cend) {
                break;
            }
            len = (Py_ssize_t)cm->cmsg_len - (Py_ssize_t)CMSG_LEN(0);
            if (data + len > cend) {
                len = cend - data;
            }
            item = Py_BuildValue("(iiy#)", cm->cmsg_level, cm->cmsg_type, data, len);
            if (item == NULL || PyList_Append(anc, item) < 0) {
                Py_XDECREF(item);
                Py_DECREF(anc);
                goto fail;
            }
            Py_DECREF(item);
        }
        if (want_address) {
            addr = mmsg_address(&names[i], mh->msg_namelen);
            if (addr == NULL) {
                Py_DECREF(anc);
                goto fail;
            }
        }
        else {
            addr = Py_NewRef(Py_None);
        }
        entry = Py_BuildValue("(nNiN)", (Py_ssize_t)hdrs[i].msg_len, anc, mh->msg_flags, addr);
        if (entry == NULL) {
            goto fail;
        }
        PyList_SET_ITEM(result, i, entry);
    }
    goto done;
fail:
    Py_CLEAR(result);
done:
    PyBuffer_Release(&buffer);
    PyMem_Free(names);
    PyMem_Free(control);
    PyMem_Free(iov);
    PyMem_Free(hdrs);
    return result;
}
#endif /* __linux__ */

/* ------------------------------------------------------------------ */
/* UDP GSO runs and GRO splitting (see trio_tun.offload.udp)            */
/* ------------------------------------------------------------------ */

/* split_gro(buffer, gso_size, /) -> list[bytes]: see offload.udp.split_gro. */
static PyObject *
py_split_gro(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "split_gro() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_ssize_t gso = PyNumber_AsSsize_t(args[1], PyExc_OverflowError);
    if (gso == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (gso < 0) {
        PyErr_Format(PyExc_ValueError, "gso_size must not be negative, not %zd", gso);
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const char *data = view.buf;
    Py_ssize_t n = view.len;
    Py_ssize_t count = (gso == 0 || gso >= n) ? 1 : (n + gso - 1) / gso;
    Py_ssize_t step = count == 1 ? n : gso;
    PyObject *list = PyList_New(count);
    if (list == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t start = i * step;
        Py_ssize_t len = n - start < step ? n - start : step;
        PyObject *part = PyBytes_FromStringAndSize(data + start, len);
        if (part == NULL) {
            Py_DECREF(list);
            PyBuffer_Release(&view);
            return NULL;
        }
        PyList_SET_ITEM(list, i, part);
    }
    PyBuffer_Release(&view);
    return list;
}

/* split_frames(buffer, lengths, /) -> (packets, malformed)
 *
 * What a stream does with one run of TUN reads packed into its pool, frame by
 * frame in C: each of the len(lengths) frames, one after another from the
 * start of buffer, is a virtio header and a packet; a plain packet (flags and
 * gso_type 0) is copied out, anything else split as split_with_header splits
 * it.  A frame of 10 bytes or fewer, or one split_with_header would reject
 * with MalformedPacket, is counted in malformed and skipped.  The stream's
 * per-frame Python loop cost about a microsecond a frame, and a run of ACKs
 * has up to 64 frames. */
static PyObject *
py_split_frames(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    PyObject *lengths, *out = NULL;
    Py_ssize_t i, count, offset = 0, malformed = 0;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "split_frames(buffer, lengths) takes 2 arguments");
        return NULL;
    }
    lengths = PySequence_Fast(args[1], "lengths must be a list or tuple");
    if (lengths == NULL) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) != 0) {
        Py_DECREF(lengths);
        return NULL;
    }
    out = PyList_New(0);
    if (out == NULL) {
        goto error;
    }
    count = PySequence_Fast_GET_SIZE(lengths);
    for (i = 0; i < count; i++) {
        Py_ssize_t n =
            PyNumber_AsSsize_t(PySequence_Fast_GET_ITEM(lengths, i), PyExc_OverflowError);
        const uint8_t *d;
        PyObject *segs;
        if (n == -1 && PyErr_Occurred()) {
            goto error;
        }
        if (n < 0 || n > view.len - offset) {
            PyErr_SetString(PyExc_ValueError, "frame lengths run past the buffer");
            goto error;
        }
        d = (const uint8_t *)view.buf + offset;
        offset += n;
        if (n <= VIRTIO_NET_HDR_LEN) {
            malformed++;
            continue;
        }
        if (d[0] == 0 && d[1] == GSO_NONE) {
            PyObject *b = PyBytes_FromStringAndSize((const char *)d + VIRTIO_NET_HDR_LEN,
                                                    n - VIRTIO_NET_HDR_LEN);
            int r;
            if (b == NULL) {
                goto error;
            }
            r = PyList_Append(out, b);
            Py_DECREF(b);
            if (r < 0) {
                goto error;
            }
            continue;
        }
        segs = split_read(d, n);
        if (segs == NULL) {
            if (!PyErr_ExceptionMatches(MalformedPacket)) {
                goto error;
            }
            PyErr_Clear();
            malformed++;
            continue;
        }
        {
            Py_ssize_t end = PyList_GET_SIZE(out);
            int r = PyList_SetSlice(out, end, end, segs);
            Py_DECREF(segs);
            if (r < 0) {
                goto error;
            }
        }
    }
    PyBuffer_Release(&view);
    Py_DECREF(lengths);
    return Py_BuildValue("(Nn)", out, malformed);
error:
    Py_XDECREF(out);
    PyBuffer_Release(&view);
    Py_DECREF(lengths);
    return NULL;
}

/* frame_segments(frames, start, end, /) -> (packets, coalesced)
 *
 * For frames[start:end], each a virtio header and a packet as coalesce makes
 * them: the packets they carry in all (VirtioFraming.segments of each,
 * summed), and how many carry more than one. */
static PyObject *
py_frame_segments(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *seq;
    Py_ssize_t start, end, i;
    long long packets = 0, coalesced = 0;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "frame_segments(frames, start, end) takes 3 arguments");
        return NULL;
    }
    /* The second is not converted while the first's error is pending. */
    start = PyNumber_AsSsize_t(args[1], PyExc_OverflowError);
    if (start == -1 && PyErr_Occurred()) {
        return NULL;
    }
    end = PyNumber_AsSsize_t(args[2], PyExc_OverflowError);
    if (end == -1 && PyErr_Occurred()) {
        return NULL;
    }
    seq = PySequence_Fast(args[0], "frames must be a list or tuple");
    if (seq == NULL) {
        return NULL;
    }
    if (start < 0 || end > PySequence_Fast_GET_SIZE(seq) || start > end) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "start and end out of range");
        return NULL;
    }
    for (i = start; i < end; i++) {
        Py_buffer view;
        const uint8_t *d;
        long long segs = 1;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &view, PyBUF_SIMPLE) != 0) {
            Py_DECREF(seq);
            return NULL;
        }
        if (view.len < VIRTIO_NET_HDR_LEN) {
            PyBuffer_Release(&view);
            Py_DECREF(seq);
            return malformed("virtio header needs 10 bytes");
        }
        d = (const uint8_t *)view.buf;
        {
            uint16_t u[2];
            memcpy(u, d + 2, 4); /* hdr_len, gso_size */
            if (d[1] != GSO_NONE && u[1] != 0) {
                Py_ssize_t payload = view.len - VIRTIO_NET_HDR_LEN - (Py_ssize_t)u[0];
                segs = payload <= 0 ? 1 : (payload + u[1] - 1) / u[1];
            }
        }
        PyBuffer_Release(&view);
        packets += segs;
        coalesced += segs > 1;
    }
    Py_DECREF(seq);
    return Py_BuildValue("(LL)", packets, coalesced);
}

/* batch_sizes(items, /) -> (smallest, largest, total): see offload.batch. */
static PyObject *
py_batch_sizes(PyObject *Py_UNUSED(self), PyObject *items)
{
    PyObject *seq = PySequence_Fast(items, "batch_sizes() needs an iterable of sized items");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t smallest = 0, largest = 0, total = 0;
    /* len() of an unusual item may run Python code that changes the caller's
     * list (seq is that list itself): its size is read again on every step,
     * and the item is held while it is measured. */
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        Py_ssize_t n;
        if (plain_bytes(item)) {
            n = PyBytes_GET_SIZE(item);
        }
        else {
            Py_INCREF(item);
            n = PyObject_Length(item);
            Py_DECREF(item);
            if (n < 0) {
                Py_DECREF(seq);
                return NULL;
            }
        }
        if (n > PY_SSIZE_T_MAX - total) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_OverflowError,
                            "the batch's total size does not fit in a Py_ssize_t");
            return NULL;
        }
        if (i == 0 || n < smallest) {
            smallest = n;
        }
        if (n > largest) {
            largest = n;
        }
        total += n;
    }
    Py_DECREF(seq);
    return Py_BuildValue("(nnn)", smallest, largest, total);
}

static int
gso_push_run(PyObject *runs, Py_ssize_t size, PyObject *run)
{
    PyObject *item = Py_BuildValue("(nO)", size, run);
    if (item == NULL) {
        return -1;
    }
    int rc = PyList_Append(runs, item);
    Py_DECREF(item);
    return rc;
}

/* gso_runs(datagrams, max_segments, max_bytes, /) -> list[(gso_size, list)]:
 * see offload.udp.gso_runs, whose grouping this follows step for step. */
static PyObject *
py_gso_runs(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "gso_runs() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_ssize_t max_segments = PyNumber_AsSsize_t(args[1], PyExc_OverflowError);
    if (max_segments == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t max_bytes = PyNumber_AsSsize_t(args[2], PyExc_OverflowError);
    if (max_bytes == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (max_segments < 1 || max_bytes < 1) {
        PyErr_SetString(PyExc_ValueError, "max_segments and max_bytes must be at least 1");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[0], "datagrams must be a sequence");
    if (seq == NULL) {
        return NULL;
    }
    PyObject *runs = PyList_New(0);
    PyObject *run = NULL, *datagram = NULL;
    Py_ssize_t size = 0, total = 0;
    if (runs == NULL) {
        goto fail;
    }
    /* len() may run Python code that changes the caller's list (seq is that
     * list itself): its size is read again on every step, as the reference's
     * for loop does, and the datagram is held while it runs. */
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        Py_XSETREF(datagram, Py_NewRef(PySequence_Fast_GET_ITEM(seq, i)));
        Py_ssize_t n = PyObject_Length(datagram);
        if (n < 0) {
            goto fail;
        }
        if (run != NULL && 0 < n && n <= size && PyList_GET_SIZE(run) < max_segments &&
            total + n <= max_bytes) {
            if (PyList_Append(run, datagram) < 0) {
                goto fail;
            }
            total += n;
            if (n < size) {
                /* A short segment can only be the last one. */
                if (gso_push_run(runs, size, run) < 0) {
                    goto fail;
                }
                Py_CLEAR(run);
            }
            continue;
        }
        if (run != NULL) {
            if (gso_push_run(runs, size, run) < 0) {
                goto fail;
            }
            Py_CLEAR(run);
        }
        PyObject *single = PyList_New(1);
        if (single == NULL) {
            goto fail;
        }
        Py_INCREF(datagram);
        PyList_SET_ITEM(single, 0, datagram);
        if (n == 0 || n > max_bytes) {
            int rc = gso_push_run(runs, n, single);
            Py_DECREF(single);
            if (rc < 0) {
                goto fail;
            }
            continue;
        }
        run = single;
        size = total = n;
    }
    Py_CLEAR(datagram);
    if (run != NULL) {
        if (gso_push_run(runs, size, run) < 0) {
            goto fail;
        }
        Py_CLEAR(run);
    }
    Py_DECREF(seq);
    return runs;
fail:
    Py_XDECREF(datagram);
    Py_XDECREF(run);
    Py_XDECREF(runs);
    Py_DECREF(seq);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Many frames per call on a TUN/TAP fd without a virtio header         */
/* ------------------------------------------------------------------ */

/* One frame per read() or write() on a TUN/TAP fd; without offload every
 * packet costs a system call, and these loops keep the Python-level call and
 * bookkeeping out of that per-packet cost.  The GIL is released around each
 * chunk of system calls (see FRAMES_CHUNK), so a thread forwarding the other
 * direction runs meanwhile. */
#if defined(__unix__) || defined(__APPLE__)
#include <errno.h>
#include <unistd.h>

#define FRAMES_EOF (-1)

/* An int argument that names a file descriptor. */
static int
fd_arg(PyObject *obj, int *fd)
{
    long v = PyLong_AsLong(obj);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (v < 0 || v > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "fd out of range");
        return -1;
    }
    *fd = (int)v;
    return 0;
}

static int
frames_fd(PyObject *const *args, Py_ssize_t nargs, const char *name, int *fd)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "%s() takes 3 arguments (%zd given)", name, nargs);
        return -1;
    }
    return fd_arg(args[0], fd);
}

/* Frames moved per trip without the GIL: the GIL is released once per chunk,
 * not per system call, so a thread forwarding the other direction does not
 * pay a GIL hand-over per packet.  A read chunk's buffer stays within 1 MiB. */
#define FRAMES_CHUNK 64
#define FRAMES_CHUNK_BYTES (1 << 20)

/* A frame loop's max_frames and size arguments, checked. */
static int
frames_limits(PyObject *max_obj, PyObject *size_obj, Py_ssize_t *max_frames, Py_ssize_t *size)
{
    *max_frames = PyNumber_AsSsize_t(max_obj, PyExc_OverflowError);
    if (*max_frames == -1 && PyErr_Occurred()) {
        return -1;
    }
    *size = PyNumber_AsSsize_t(size_obj, PyExc_OverflowError);
    if (*size == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (*max_frames < 0 || *size < 1 || *size > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "max_frames must be >= 0 and size 1..1 MiB");
        return -1;
    }
    return 0;
}

/* read_frames(fd, max_frames, size, /) -> (frames, status)
 *
 * Reads up to max_frames frames of at most size bytes each from a
 * non-blocking fd.  status is 0 when max_frames were read, EAGAIN when the fd
 * ran dry, -1 when a read returned 0 (end of stream: a socket's peer is gone),
 * else the errno of the read that failed.  Frames read before a failure are
 * returned with it, never lost. */
static PyObject *
py_read_frames(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    int fd, status = 0;
    Py_ssize_t max_frames, size;
    if (frames_fd(args, nargs, "read_frames", &fd) < 0 ||
        frames_limits(args[1], args[2], &max_frames, &size) < 0) {
        return NULL;
    }
    Py_ssize_t chunk = FRAMES_CHUNK_BYTES / size;
    if (chunk > FRAMES_CHUNK) {
        chunk = FRAMES_CHUNK;
    }
    if (chunk > max_frames) {
        chunk = max_frames;
    }
    if (chunk < 1) {
        chunk = 1;
    }
    char *buf = PyMem_Malloc((size_t)(chunk * size));
    PyObject *frames = PyList_New(0);
    if (buf == NULL || frames == NULL) {
        PyMem_Free(buf);
        Py_XDECREF(frames);
        return PyErr_NoMemory();
    }
    ssize_t lengths[FRAMES_CHUNK];
    while (status == 0 && PyList_GET_SIZE(frames) < max_frames) {
        Py_ssize_t want = max_frames - PyList_GET_SIZE(frames);
        if (want > chunk) {
            want = chunk;
        }
        Py_ssize_t got = 0;
        int err = 0;
        Py_BEGIN_ALLOW_THREADS
        while (got < want) {
            ssize_t n = read(fd, buf + got * size, (size_t)size);
            if (n <= 0) {
                err = n == 0 ? FRAMES_EOF : errno;
                break;
            }
            lengths[got++] = n;
        }
        Py_END_ALLOW_THREADS
        for (Py_ssize_t k = 0; k < got; k++) {
            PyObject *frame = PyBytes_FromStringAndSize(buf + k * size, lengths[k]);
            if (frame == NULL || PyList_Append(frames, frame) < 0) {
                Py_XDECREF(frame);
                goto fail;
            }
            Py_DECREF(frame);
        }
        if (err == EINTR) {
            if (PyErr_CheckSignals() < 0) {
                goto fail;
            }
            continue;
        }
        if (err != 0) {
            status = err == EWOULDBLOCK ? EAGAIN : err;
        }
    }
    PyMem_Free(buf);
    return Py_BuildValue("(Ni)", frames, status);
fail:
    PyMem_Free(buf);
    Py_DECREF(frames);
    return NULL;
}

/* read_packed(fd, pool, size, max_frames, /) -> (lengths, status)
 *
 * read_frames without a bytes object per frame: the frames are read one after
 * another into pool (a writable buffer), so nothing is copied beyond the
 * kernel's copy.  Reads until max_frames (at most FRAMES_CHUNK) were read or
 * the pool has less than size bytes of room left (status 0), or until a read
 * fails: EAGAIN when the fd ran dry, FRAMES_EOF when it returned 0, else its
 * errno.  lengths holds one int per frame read; frame k starts at the sum of
 * lengths[:k].  The GIL is released once around all the reads. */
static PyObject *
py_read_packed(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    int fd, status = 0;
    Py_ssize_t size, max_frames, got = 0, used = 0;
    ssize_t lengths[FRAMES_CHUNK];
    Py_buffer pool;

    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "read_packed() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    if (fd_arg(args[0], &fd) < 0 || frames_limits(args[3], args[2], &max_frames, &size) < 0) {
        return NULL;
    }
    if (max_frames > FRAMES_CHUNK) {
        max_frames = FRAMES_CHUNK;
    }
    /* Held until we return: a bytearray can't be resized while exported. */
    if (PyObject_GetBuffer(args[1], &pool, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    char *buf = pool.buf;
    for (;;) {
        int err = 0;
        Py_BEGIN_ALLOW_THREADS
        while (got < max_frames && pool.len - used >= size) {
            ssize_t n = read(fd, buf + used, (size_t)size);
            if (n <= 0) {
                err = n == 0 ? FRAMES_EOF : errno;
                break;
            }
            lengths[got++] = n;
            used += n;
        }
        Py_END_ALLOW_THREADS
        if (err == EINTR) {
            if (PyErr_CheckSignals() < 0) {
                PyBuffer_Release(&pool);
                return NULL;
            }
            continue;
        }
        if (err != 0) {
            status = err == EWOULDBLOCK ? EAGAIN : err;
        }
        break;
    }
    PyBuffer_Release(&pool);
    PyObject *list = PyList_New(got);
    if (list == NULL) {
        return NULL;
    }
    for (Py_ssize_t k = 0; k < got; k++) {
        PyObject *n = PyLong_FromSsize_t(lengths[k]);
        if (n == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, k, n);
    }
    return Py_BuildValue("(Ni)", list, status);
}

/* write_frames(fd, frames, start, /) -> (next, status, nbytes)
 *
 * Writes frames[start:] (a list or tuple of bytes-like objects), one write()
 * each, to a non-blocking fd.  Stops at the first write that fails: next is
 * the index of that frame (len(frames) when all went), status its errno (0
 * when all went; EAGAIN when the fd is full), nbytes what the written frames
 * held. */
static PyObject *
py_write_frames(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    int fd, status = 0;
    Py_ssize_t start;
    long long total = 0;
    if (frames_fd(args, nargs, "write_frames", &fd) < 0) {
        return NULL;
    }
    start = PyNumber_AsSsize_t(args[2], PyExc_OverflowError);
    if (start == -1 && PyErr_Occurred()) {
        return NULL;
    }
    /* A snapshot: another thread may empty a list while the GIL is released. */
    PyObject *seq;
    if (PyList_Check(args[1])) {
        seq = PyList_AsTuple(args[1]);
    }
    else {
        seq = PySequence_Fast(args[1], "frames must be a list or tuple");
    }
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    if (start < 0 || start > count) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "start out of range");
        return NULL;
    }
    Py_buffer views[FRAMES_CHUNK];
    Py_ssize_t i = start;
    while (status == 0 && i < count) {
        Py_ssize_t held = 0, want = count - i;
        if (want > FRAMES_CHUNK) {
            want = FRAMES_CHUNK;
        }
        for (; held < want; held++) {
            if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i + held), &views[held],
                                   PyBUF_SIMPLE) < 0) {
                if (held == 0) {
                    Py_DECREF(seq);
                    return NULL;
                }
                /* Write the frames before it; the next chunk starts with it
                 * and raises there, after those are counted. */
                PyErr_Clear();
                break;
            }
        }
        Py_ssize_t done = 0;
        long long bytes = 0;
        int err = 0;
        Py_BEGIN_ALLOW_THREADS
        while (done < held) {
            ssize_t n = write(fd, views[done].buf, (size_t)views[done].len);
            if (n < 0) {
                err = errno;
                break;
            }
            bytes += n;
            done++;
        }
        Py_END_ALLOW_THREADS
        for (Py_ssize_t k = 0; k < held; k++) {
            PyBuffer_Release(&views[k]);
        }
        i += done;
        total += bytes;
        if (err == EINTR) {
            if (PyErr_CheckSignals() < 0) {
                Py_DECREF(seq);
                return NULL;
            }
            continue;
        }
        if (err != 0) {
            status = err == EWOULDBLOCK ? EAGAIN : err;
        }
    }
    Py_DECREF(seq);
    return Py_BuildValue("(niL)", i, status, total);
}

/* A frame pump for a forwarding thread: read a frame from one fd, write it to
 * another, for as long as nothing needs Python.  The whole loop runs without
 * the GIL, so a thread pumping the other direction, or the event loop, runs
 * meanwhile.  Two threads driving the streams' receive_raw/send_raw waited for
 * the GIL after most system calls: 6.9-7.4 Gbit/s with four flows where this
 * pump moves 13.7 (bench/forward.py, interleaved runs).
 *
 * The caller's state buffer (PUMP_FIELDS native uint64s, 8-byte aligned) is
 * shared with other threads while the pump runs: its stop field is read before
 * every frame, the counters are stored after every frame, so a statistics call
 * sees them live. */
#include <poll.h>
#include <stdint.h>

enum { PUMP_STOP, PUMP_READS, PUMP_READ_BYTES, PUMP_WRITES, PUMP_WRITE_BYTES, PUMP_DROPPED,
       PUMP_FIELDS };

/* Room for a batch beyond its first frame: 64 packets of a 1500-byte MTU, or
 * three more super-packets. */
#define PUMP_POOL (192 * 1024)
/* pump_pair: rounds a lane that keeps moving gets before the other's turn. */
#define PAIR_ROUNDS 16

/* Wait until fd is ready for events or stop_fd is readable.  Returns 1 for
 * ready (or in error: the next system call on fd reports it), 0 for stop, or
 * -1 with errno (EINTR included) when poll itself failed. */
static int
pump_wait(int fd, short events, int stop_fd)
{
    struct pollfd p[2] = {{fd, events, 0}, {stop_fd, POLLIN, 0}};
    if (poll(p, 2, -1) < 0) {
        return -1;
    }
    return p[1].revents ? 0 : 1;
}

static void
pump_store(uint64_t *state, int field, uint64_t value)
{
    __atomic_store_n(&state[field], value, __ATOMIC_RELAXED);
}

/* Get a pump's state buffer: writable, 8-byte aligned, PUMP_FIELDS uint64s. */
static int
pump_state(PyObject *obj, Py_buffer *view)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE) < 0) {
        return -1;
    }
    if (view->len < (Py_ssize_t)(PUMP_FIELDS * sizeof(uint64_t)) ||
        ((uintptr_t)view->buf % sizeof(uint64_t)) != 0) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError,
                        "state must be a writable, 8-byte aligned buffer of 6 uint64s");
        return -1;
    }
    return 0;
}

/* A pump's size, limit and batch arguments, checked. */
static int
pump_sizes(PyObject *size_obj, PyObject *const *limits, int nlimits, PyObject *batch_obj,
           Py_ssize_t *size, Py_ssize_t *limit, Py_ssize_t *batch)
{
    *size = PyNumber_AsSsize_t(size_obj, PyExc_OverflowError);
    if (*size == -1 && PyErr_Occurred()) {
        return -1;
    }
    for (int k = 0; k < nlimits; k++) {
        limit[k] = PyNumber_AsSsize_t(limits[k], PyExc_OverflowError);
        if (limit[k] == -1 && PyErr_Occurred()) {
            return -1;
        }
    }
    *batch = 1;
    if (batch_obj != NULL) {
        *batch = PyNumber_AsSsize_t(batch_obj, PyExc_OverflowError);
        if (*batch == -1 && PyErr_Occurred()) {
            return -1;
        }
    }
    int bad_limit = 0;
    for (int k = 0; k < nlimits; k++) {
        bad_limit |= limit[k] < 1;
    }
    if (*size < 1 || *size > (1 << 20) || bad_limit) {
        PyErr_SetString(PyExc_ValueError, "size must be 1..1 MiB and limit >= 1");
        return -1;
    }
    if (*batch < 1 || *batch > 64) {
        PyErr_SetString(PyExc_ValueError, "batch must be 1..64 frames");
        return -1;
    }
    return 0;
}

/* pump_frames(src_fd, dst_fd, size, limit, stop_read_fd, stop_write_fd, state,
 *             batch=1, /) -> (status, writing)
 *
 * Moves frames of at most size bytes from src_fd to dst_fd (both
 * non-blocking), waiting with poll when one is not ready.  Up to batch frames
 * are read (until the source has no more) before they are written in order.
 * A frame longer than limit is dropped and counted.  Returns when:
 *   - state[PUMP_STOP] is non-zero before a read, or stop_read_fd becomes
 *     readable while waiting to read: (0, False), no frame in hand;
 *   - a read fails: (errno, False) once the frames read before it are
 *     written, nothing lost (-1: the read returned 0);
 *   - a write fails other than with EAGAIN: that frame is dropped, the rest
 *     of the batch is still written, then (errno of the first failure, True);
 *   - stop_write_fd becomes readable while frames wait for room: (0, True),
 *     the frames still in hand dropped.
 * A failing poll returns its errno the same way.  An interrupted system call
 * is retried after the signal handlers ran (a handler's exception is raised,
 * the frames in hand counted as dropped). */
static PyObject *
py_pump_frames(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    int fds[4];
    Py_ssize_t size, limit, batch;
    if (nargs != 7 && nargs != 8) {
        PyErr_Format(PyExc_TypeError, "pump_frames() takes 7 or 8 arguments (%zd given)", nargs);
        return NULL;
    }
    const int fd_args[4] = {0, 1, 4, 5};
    for (int k = 0; k < 4; k++) {
        if (fd_arg(args[fd_args[k]], &fds[k]) < 0) {
            return NULL;
        }
    }
    if (pump_sizes(args[2], &args[3], 1, nargs == 8 ? args[7] : NULL, &size, &limit, &batch) <
        0) {
        return NULL;
    }
    Py_buffer view;
    if (pump_state(args[6], &view) < 0) {
        return NULL;
    }
    uint64_t *state = view.buf;
    /* Frames are packed one after the other; a read needs room for size bytes,
     * so a batch of super-packets stops at a few frames, of plain packets at
     * batch frames. */
    const Py_ssize_t pool_len = batch == 1 ? size : size + PUMP_POOL;
    char *pool = PyMem_Malloc((size_t)pool_len);
    ssize_t *lens = PyMem_Malloc((size_t)batch * 2 * sizeof(ssize_t));
    if (pool == NULL || lens == NULL) {
        PyMem_Free(pool);
        PyMem_Free(lens);
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    const int src = fds[0], dst = fds[1], stop_read = fds[2], stop_write = fds[3];
    uint64_t reads = state[PUMP_READS], read_bytes = state[PUMP_READ_BYTES];
    uint64_t writes = state[PUMP_WRITES], write_bytes = state[PUMP_WRITE_BYTES];
    uint64_t dropped = state[PUMP_DROPPED];
    int status = 0, writing = 0;
    /* Frames in hand (have), the next to write (next), across an EINTR return
     * to Python too; the first write error of this batch; how the last read
     * phase ended early (reported once its frames are written). */
    Py_ssize_t have = 0, next = 0, used = 0;
    ssize_t *offs = lens + batch;
    int write_err = 0, read_end = 0, read_ended = 0;
    for (;;) {
        int interrupted = 0;
        Py_BEGIN_ALLOW_THREADS
        for (;;) {
            while (next < have) {
                ssize_t w = write(dst, pool + offs[next], (size_t)lens[next]);
                if (w >= 0) {
                    next++;
                    pump_store(state, PUMP_WRITES, ++writes);
                    pump_store(state, PUMP_WRITE_BYTES, write_bytes += (uint64_t)w);
                    continue;
                }
                int err = errno;
                if (err == EAGAIN || err == EWOULDBLOCK) {
                    int r = pump_wait(dst, POLLOUT, stop_write);
                    if (r > 0) {
                        continue;
                    }
                    if (r == 0) {
                        /* No room before the stop: what is in hand is given up. */
                        dropped += (uint64_t)(have - next);
                        pump_store(state, PUMP_DROPPED, dropped);
                        next = have;
                        status = 0;
                        writing = 1;
                        break;
                    }
                    err = errno;
                }
                if (err == EINTR) {
                    interrupted = 1;
                    break;
                }
                /* Refused: this frame is given up, the others still go. */
                next++;
                pump_store(state, PUMP_DROPPED, ++dropped);
                if (write_err == 0) {
                    write_err = err;
                }
            }
            if (interrupted || writing) {
                break;
            }
            have = next = used = 0;
            if (write_err) {
                status = write_err;
                writing = 1;
                break;
            }
            if (read_ended) {
                status = read_end;
                break;
            }
            while (have < batch && pool_len - used >= size) {
                if (__atomic_load_n(&state[PUMP_STOP], __ATOMIC_ACQUIRE)) {
                    break;
                }
                ssize_t n = read(src, pool + used, (size_t)size);
                if (n < 0) {
                    int err = errno;
                    if (err == EAGAIN || err == EWOULDBLOCK) {
                        if (have > 0) {
                            break;
                        }
                        int r = pump_wait(src, POLLIN, stop_read);
                        if (r > 0) {
                            continue;
                        }
                        if (r == 0) {
                            break;
                        }
                        err = errno;
                    }
                    if (err == EINTR) {
                        interrupted = 1;
                    }
                    else {
                        read_end = err;
                        read_ended = 1;
                    }
                    break;
                }
                if (n == 0) {
                    read_end = FRAMES_EOF;
                    read_ended = 1;
                    break;
                }
                pump_store(state, PUMP_READS, ++reads);
                pump_store(state, PUMP_READ_BYTES, read_bytes += (uint64_t)n);
                if (n > limit) {
                    pump_store(state, PUMP_DROPPED, ++dropped);
                    continue;
                }
                offs[have] = used;
                lens[have++] = n;
                used += n;
            }
            if (have == 0 && !read_ended) {
                /* Stopped, or interrupted with nothing in hand. */
                break;
            }
        }
        Py_END_ALLOW_THREADS
        if (!interrupted) {
            break;
        }
        if (PyErr_CheckSignals() < 0) {
            dropped += (uint64_t)(have - next);
            pump_store(state, PUMP_DROPPED, dropped);
            PyMem_Free(pool);
            PyMem_Free(lens);
            PyBuffer_Release(&view);
            return NULL;
        }
    }
    PyMem_Free(pool);
    PyMem_Free(lens);
    PyBuffer_Release(&view);
    return Py_BuildValue("(iO)", status, writing ? Py_True : Py_False);
}

/* One direction of pump_pair: its fds, its pool of frames in hand, and how
 * its last read or write phase ended. */
typedef struct {
    int src, dst;
    Py_ssize_t limit;
    uint64_t *state;
    char *pool;
    ssize_t *lens, *offs;
    Py_ssize_t have, next, used;
    int write_err, read_end, read_ended;
    uint64_t reads, read_bytes, writes, write_bytes, dropped;
} pair_lane;

/* pump_pair(a_fd, b_fd, size, limit_ab, limit_ba, stop_read_fd, stop_write_fd,
 *           state_ab, state_ba, batch, /) -> (lane, status, writing)
 *
 * Both directions between two fds in one thread (lane 0: a to b, lane 1: b to
 * a), the way bench/fwd.c forwards: write what each lane holds, read a run of
 * up to batch frames from each lane's source, and poll only when neither
 * moved.  With offload, one thread serving both directions beat one thread
 * per direction, in C as with this module's pumps (one wake-up where two
 * threads need two); without offload, two threads win (the kernel's work per
 * packet fills a core), so ThreadedForwarder only pairs lanes with offload.
 *
 * Each lane follows pump_frames' rules.  A lane's failure (a read error or
 * end of stream, or a write refused) stops all reading; the frames either
 * lane holds are written first, then (lane, errno, writing) is returned, so
 * returning loses nothing.  A stop (a stop flag, or stop_read_fd readable)
 * also stops the reading, and once the frames in hand are written it returns
 * (0, 0, False).  Once reading has stopped (not before: the caller stops
 * reading first), stop_write_fd readable while frames wait for room drops
 * them and returns (lane, 0, True) for the first lane that held some, or a
 * lane's failure if one is pending. */
static PyObject *
py_pump_pair(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    int fds[4];
    Py_ssize_t size, limits[2], batch;
    if (nargs != 10) {
        PyErr_Format(PyExc_TypeError, "pump_pair() takes 10 arguments (%zd given)", nargs);
        return NULL;
    }
    const int fd_args[4] = {0, 1, 5, 6};
    for (int k = 0; k < 4; k++) {
        if (fd_arg(args[fd_args[k]], &fds[k]) < 0) {
            return NULL;
        }
    }
    if (pump_sizes(args[2], &args[3], 2, args[9], &size, limits, &batch) < 0) {
        return NULL;
    }
    Py_buffer views[2];
    if (pump_state(args[7], &views[0]) < 0) {
        return NULL;
    }
    if (pump_state(args[8], &views[1]) < 0) {
        PyBuffer_Release(&views[0]);
        return NULL;
    }
    const Py_ssize_t pool_len = batch == 1 ? size : size + PUMP_POOL;
    pair_lane lanes[2];
    memset(lanes, 0, sizeof lanes);
    int nomem = 0;
    for (int d = 0; d < 2; d++) {
        pair_lane *L = &lanes[d];
        L->src = fds[d];
        L->dst = fds[1 - d];
        L->limit = limits[d];
        L->state = views[d].buf;
        L->pool = PyMem_Malloc((size_t)pool_len);
        L->lens = PyMem_Malloc((size_t)batch * 2 * sizeof(ssize_t));
        nomem |= L->pool == NULL || L->lens == NULL;
        if (L->lens != NULL) {
            L->offs = L->lens + batch;
        }
        L->reads = L->state[PUMP_READS];
        L->read_bytes = L->state[PUMP_READ_BYTES];
        L->writes = L->state[PUMP_WRITES];
        L->write_bytes = L->state[PUMP_WRITE_BYTES];
        L->dropped = L->state[PUMP_DROPPED];
    }
    const int stop_read = fds[2], stop_write = fds[3];
    PyObject *result = NULL;
    if (nomem) {
        PyErr_NoMemory();
        goto done;
    }
    /* stopping: no more reads (a stop, or a lane's failure waiting to be
     * reported); failed: the lane whose failure that is (-1: none). */
    int stopping = 0, failed = -1, status = 0, writing = 0, dropped_lane = -1, stop_dropped = 0;
    for (;;) {
        int interrupted = 0, finished = 0;
        Py_BEGIN_ALLOW_THREADS
        for (;;) {
            int progress = 0;
            /* A lane that moves gets up to PAIR_ROUNDS write-and-read rounds
             * before the other gets its turn, as bench/fwd.c drains up to 64
             * frames from a ready fd. */
            for (int step = 0; step < 2 * PAIR_ROUNDS && !interrupted; step++) {
                const int d = step / PAIR_ROUNDS;
                pair_lane *L = &lanes[d];
                int lp = 0;
                while (L->next < L->have) {
                    ssize_t w = write(L->dst, L->pool + L->offs[L->next],
                                      (size_t)L->lens[L->next]);
                    if (w >= 0) {
                        L->next++;
                        pump_store(L->state, PUMP_WRITES, ++L->writes);
                        pump_store(L->state, PUMP_WRITE_BYTES, L->write_bytes += (uint64_t)w);
                        lp = 1;
                        continue;
                    }
                    int err = errno;
                    if (err == EAGAIN || err == EWOULDBLOCK) {
                        break;
                    }
                    if (err == EINTR) {
                        interrupted = 1;
                        break;
                    }
                    /* Refused: this frame is given up, the others still go. */
                    L->next++;
                    pump_store(L->state, PUMP_DROPPED, ++L->dropped);
                    lp = 1;
                    if (L->write_err == 0) {
                        L->write_err = err;
                    }
                }
                if (interrupted || L->next < L->have) {
                    goto lane_done;
                }
                L->have = L->next = L->used = 0;
                if (failed < 0 && (L->write_err || L->read_ended)) {
                    failed = d;
                    stopping = 1;
                }
                while (!stopping && L->have < batch && pool_len - L->used >= size) {
                    if (__atomic_load_n(&lanes[0].state[PUMP_STOP], __ATOMIC_ACQUIRE) ||
                        __atomic_load_n(&lanes[1].state[PUMP_STOP], __ATOMIC_ACQUIRE)) {
                        stopping = 1;
                        break;
                    }
                    ssize_t n = read(L->src, L->pool + L->used, (size_t)size);
                    if (n < 0) {
                        int err = errno;
                        if (err == EAGAIN || err == EWOULDBLOCK) {
                            break;
                        }
                        if (err == EINTR) {
                            interrupted = 1;
                            break;
                        }
                        L->read_end = err;
                        L->read_ended = 1;
                        lp = 1;
                        break;
                    }
                    lp = 1;
                    if (n == 0) {
                        L->read_end = FRAMES_EOF;
                        L->read_ended = 1;
                        break;
                    }
                    pump_store(L->state, PUMP_READS, ++L->reads);
                    pump_store(L->state, PUMP_READ_BYTES, L->read_bytes += (uint64_t)n);
                    if (n > L->limit) {
                        pump_store(L->state, PUMP_DROPPED, ++L->dropped);
                        continue;
                    }
                    L->offs[L->have] = L->used;
                    L->lens[L->have++] = n;
                    L->used += n;
                }
            lane_done:
                progress |= lp;
                if (!lp) {
                    step = (d + 1) * PAIR_ROUNDS - 1;
                }
            }
            if (interrupted) {
                break;
            }
            if (progress) {
                continue;
            }
            int holding = lanes[0].have > lanes[0].next || lanes[1].have > lanes[1].next;
            if (stopping && !holding) {
                if (failed >= 0) {
                    pair_lane *L = &lanes[failed];
                    writing = L->write_err != 0;
                    status = writing ? L->write_err : L->read_end;
                }
                else if (stop_dropped) {
                    writing = 1;
                }
                finished = 1;
                break;
            }
            /* Nothing moved: wait for room where frames are held, for frames
             * where a lane is empty (unless stopping), and for the stop pipe
             * (stop_write once reading has stopped: stop_read stays readable). */
            struct pollfd p[3];
            int np = 0;
            for (int d = 0; d < 2; d++) {
                pair_lane *L = &lanes[d];
                if (L->have > L->next) {
                    p[np++] = (struct pollfd){L->dst, POLLOUT, 0};
                }
                else if (!stopping) {
                    p[np++] = (struct pollfd){L->src, POLLIN, 0};
                }
            }
            p[np++] = (struct pollfd){stopping ? stop_write : stop_read, POLLIN, 0};
            if (poll(p, (nfds_t)np, -1) < 0) {
                if (errno == EINTR) {
                    interrupted = 1;
                    break;
                }
                /* Not about either lane: reported as lane 0's, after the frames in hand. */
                if (failed < 0) {
                    lanes[0].read_end = errno;
                    lanes[0].read_ended = 1;
                    failed = 0;
                }
                stopping = 1;
                continue;
            }
            if (p[np - 1].revents) {
                if (!stopping) {
                    stopping = 1;
                }
                else {
                    /* No room before the stop: what is in hand is given up. */
                    for (int d = 0; d < 2; d++) {
                        pair_lane *L = &lanes[d];
                        if (L->have > L->next) {
                            if (dropped_lane < 0) {
                                dropped_lane = d;
                            }
                            L->dropped += (uint64_t)(L->have - L->next);
                            pump_store(L->state, PUMP_DROPPED, L->dropped);
                            L->next = L->have;
                        }
                    }
                    /* (dropped_lane, 0, True), unless a lane's failure comes first. */
                    stop_dropped = 1;
                }
            }
        }
        Py_END_ALLOW_THREADS
        if (finished) {
            break;
        }
        if (PyErr_CheckSignals() < 0) {
            for (int d = 0; d < 2; d++) {
                pair_lane *L = &lanes[d];
                L->dropped += (uint64_t)(L->have - L->next);
                pump_store(L->state, PUMP_DROPPED, L->dropped);
            }
            goto done;
        }
    }
    {
        int lane = failed >= 0 ? failed : (stop_dropped ? dropped_lane : 0);
        result = Py_BuildValue("(iiO)", lane, status, writing ? Py_True : Py_False);
    }
done:
    for (int d = 0; d < 2; d++) {
        PyMem_Free(lanes[d].pool);
        PyMem_Free(lanes[d].lens);
    }
    PyBuffer_Release(&views[0]);
    PyBuffer_Release(&views[1]);
    return result;
}
#endif

/* ------------------------------------------------------------------ */
/* Module                                                              */
/* ------------------------------------------------------------------ */

static PyMethodDef methods[] = {
    {"ones_complement_sum", (PyCFunction)(void (*)(void))py_ones_complement_sum,
     METH_VARARGS | METH_KEYWORDS,
     "ones_complement_sum(data, initial=0)\n--\n\n"
     "16-bit folded ones'-complement sum (not inverted) of data plus initial.\n\n"
     "data is read as big-endian 16-bit words, an odd last byte padded with a\n"
     "zero byte; initial (0..0xFFFFFFFF) chains sums, e.g. a pseudo-header sum\n"
     "followed by the segment it covers."},
    {"checksum", (PyCFunction)(void (*)(void))py_checksum, METH_VARARGS | METH_KEYWORDS,
     "checksum(data, initial=0)\n--\n\n"
     "Internet checksum of data: the inverted ones_complement_sum(data, initial),\n"
     "ready to store in an IPv4, TCP or UDP header."},
    {"split", (PyCFunction)(void (*)(void))py_split, METH_FASTCALL,
     "split(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, packet, /)\n--\n\n"
     "Turn packet into complete wire packets, given the virtio header's fields.\n\n"
     "Exported as trio_tun.offload.split_fields: split() for callers that parsed\n"
     "the header themselves.  Completes a NEEDS_CSUM checksum and cuts a GSO packet into\n"
     "its segments; raises MalformedPacket when the fields and the packet\n"
     "disagree or the packet cannot be segmented."},
    {"split_with_header", (PyCFunction)(void (*)(void))py_split_with_header,
     METH_FASTCALL | METH_KEYWORDS,
     "split_with_header(buf)\n--\n\n"
     "Turn one whole TUN read (10-byte virtio header, then the packet) into\n"
     "complete wire packets.\n\n"
     "split() on the parsed header; raises MalformedPacket when buf is shorter\n"
     "than the header or the header and the packet disagree."},
    {"gro_parse", (PyCFunction)py_gro_parse, METH_O,
     "gro_parse(packet, /)\n--\n\n"
     "Classify one IP packet for GroTable and verify its checksums (internal:\n"
     "the C twin of trio_tun.offload.gro.parse)."},
    {"gro_build", (PyCFunction)(void (*)(void))py_gro_build, METH_FASTCALL,
     "gro_build(first, ihl, hlen, gso_size, psh, payloads, /)\n--\n\n"
     "Assemble a merged packet with its virtio header from the first segment's\n"
     "headers and all the payloads (internal: the C twin of\n"
     "trio_tun.offload.gro.build)."},
    {"coalesce", (PyCFunction)(void (*)(void))py_coalesce, METH_FASTCALL | METH_KEYWORDS,
     "coalesce(packets, *, uso=False, max_size=65535, allow_short_last=True)\n--\n\n"
     "Coalesce a batch of IP packets: a fresh GroTable, add all, flush.\n\n"
     "Returns the buffers to write to a TUN device opened with offload, each a\n"
     "virtio header and one, possibly merged, packet."},
#ifdef __linux__
    {"sendmmsg", (PyCFunction)py_sendmmsg, METH_VARARGS,
     "sendmmsg(fd, messages, /)\n--\n\n"
     "Send (buffers, gso_size, sockaddr) messages in one syscall; returns how many went."},
    {"recvmmsg", (PyCFunction)py_recvmmsg, METH_VARARGS,
     "recvmmsg(fd, buffer, bufsize, max_messages, ancbufsize, want_address, /)\n--\n\n"
     "Receive up to max_messages datagrams in one syscall, as recvmsg_into would."},
#endif
    {"split_gro", (PyCFunction)(void (*)(void))py_split_gro, METH_FASTCALL,
     "split_gro(buffer, gso_size, /)\n--\n\n"
     "Cut what one UDP_GRO read brought into its datagrams.\n\n"
     "Every datagram is gso_size bytes except perhaps the last; a gso_size of 0\n"
     "or one at least the buffer's length gives the buffer back whole.  Raises\n"
     "ValueError if gso_size is negative."},
    {"gso_runs", (PyCFunction)(void (*)(void))py_gso_runs, METH_FASTCALL,
     "gso_runs(datagrams, max_segments, max_bytes, /)\n--\n\n"
     "Group consecutive datagrams into (gso_size, datagrams) runs that one\n"
     "UDP_SEGMENT send can carry.\n\n"
     "A run is datagrams of one size, the last perhaps shorter, at most\n"
     "max_segments of them and max_bytes in all; an empty or oversized datagram\n"
     "is a run of its own.  Raises ValueError if a limit is less than 1."},
    {"split_frames", (PyCFunction)(void (*)(void))py_split_frames, METH_FASTCALL,
     "split_frames(buffer, lengths, /)\n--\n\n"
     "The packets in a run of virtio frames packed one after another in buffer\n"
     "(split as split_with_header splits each), and how many frames were\n"
     "malformed and skipped: (packets, malformed)."},
    {"frame_segments", (PyCFunction)(void (*)(void))py_frame_segments, METH_FASTCALL,
     "frame_segments(frames, start, end, /)\n--\n\n"
     "(packets, coalesced) carried by the coalesced virtio frames frames[start:end]."},
    {"batch_sizes", (PyCFunction)py_batch_sizes, METH_O,
     "batch_sizes(items, /)\n--\n\n"
     "(smallest, largest, total) of the items' lengths in one pass; (0, 0, 0)\n"
     "for none.\n\n"
     "What a batch call checks before it writes (an empty or oversized packet)\n"
     "and counts after (bytes), without an int object per item.  Raises\n"
     "TypeError for an item without a length, OverflowError if the total does\n"
     "not fit in a Py_ssize_t."},
#if defined(__unix__) || defined(__APPLE__)
    {"read_frames", (PyCFunction)(void (*)(void))py_read_frames, METH_FASTCALL,
     "read_frames(fd, max_frames, size, /)\n--\n\n"
     "Read up to max_frames frames from a non-blocking fd; returns (frames, status)."},
    {"read_packed", (PyCFunction)(void (*)(void))py_read_packed, METH_FASTCALL,
     "read_packed(fd, pool, size, max_frames, /)\n--\n\n"
     "Read frames one after another into the writable buffer pool; returns (lengths, status)."},
    {"write_frames", (PyCFunction)(void (*)(void))py_write_frames, METH_FASTCALL,
     "write_frames(fd, frames, start, /)\n--\n\n"
     "Write frames[start:] one write() each; returns (next, status, nbytes)."},
    {"pump_frames", (PyCFunction)(void (*)(void))py_pump_frames, METH_FASTCALL,
     "pump_frames(src_fd, dst_fd, size, limit, stop_read_fd, stop_write_fd, state, batch=1, /)\n--\n\n"
     "Move frames from src_fd to dst_fd without the GIL until stopped or failed;\n"
     "returns (status, writing).  state holds a stop flag and live counters."},
    {"pump_pair", (PyCFunction)(void (*)(void))py_pump_pair, METH_FASTCALL,
     "pump_pair(a_fd, b_fd, size, limit_ab, limit_ba, stop_read_fd, stop_write_fd, state_ab, "
     "state_ba, batch, /)\n--\n\n"
     "Move frames both ways between a_fd and b_fd in this thread, without the GIL, until\n"
     "stopped or failed; returns (lane, status, writing)."},
#endif
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

/* Seed the flow-key hash from os.urandom. */
static int
seed_hash(void)
{
    PyObject *os, *r;
    int rc = -1;

    os = PyImport_ImportModule("os");
    if (os == NULL) {
        return -1;
    }
    r = PyObject_CallMethod(os, "urandom", "i", (int)sizeof(hash_seed));
    Py_DECREF(os);
    if (r == NULL) {
        return -1;
    }
    if (PyBytes_Check(r) && PyBytes_GET_SIZE(r) == (Py_ssize_t)sizeof(hash_seed)) {
        memcpy(hash_seed, PyBytes_AS_STRING(r), sizeof(hash_seed));
        rc = 0;
    }
    else {
        PyErr_SetString(PyExc_RuntimeError, "os.urandom returned an unexpected value");
    }
    Py_DECREF(r);
    return rc;
}

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
    if (seed_hash() < 0) {
        return NULL;
    }
#ifdef HAVE_AVX2_SUM
    /* TRIO_TUN_NO_AVX2 keeps the SSE2 loop: for tests, and for anyone who
     * suspects the AVX2 one. */
    __builtin_cpu_init();
    use_avx2 = __builtin_cpu_supports("avx2") && getenv("TRIO_TUN_NO_AVX2") == NULL;
#endif
    if (PyType_Ready(&GroTableType) < 0) {
        return NULL;
    }
    SegmentType.tp_base = &PyBytes_Type;
    SegmentType.tp_basicsize = PyBytes_Type.tp_basicsize;
    SegmentType.tp_itemsize = PyBytes_Type.tp_itemsize;
    if (PyType_Ready(&SegmentType) < 0) {
        return NULL;
    }
    m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&GroTableType);
    if (PyModule_AddObject(m, "GroTable", (PyObject *)&GroTableType) < 0) {
        Py_DECREF(&GroTableType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&SegmentType);
    if (PyModule_AddObject(m, "Segment", (PyObject *)&SegmentType) < 0) {
        Py_DECREF(&SegmentType);
        Py_DECREF(m);
        return NULL;
    }
    /* Which loop be_sum runs: "avx2", "sse2" or "scalar". */
#ifdef HAVE_AVX2_SUM
    const char *simd = use_avx2 ? "avx2" : "sse2";
#elif defined(HAVE_SSE2_SUM)
    const char *simd = "sse2";
#else
    const char *simd = "scalar";
#endif
    if (PyModule_AddStringConstant(m, "CHECKSUM_LOOP", simd) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
