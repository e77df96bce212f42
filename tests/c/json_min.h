/*
 * json_min.h: a tiny, test-only JSON reader for the JSON files in tests/vectors.
 *
 * Parses a whole document into a tree of nodes (malloc is fine here: tests only, never the core).
 * Supports objects, arrays, strings (with the usual escapes, \uXXXX encoded as UTF-8), integers
 * (64-bit; a fraction or exponent is accepted and truncated), null, true and false.
 *
 *   struct jm_node *root = jm_load("tests/vectors/frames.json");   // NULL + message on error
 *   const struct jm_node *v = jm_path(root, "vectors.0.frame");     // '.'-separated; numbers index arrays
 *   uint8_t buf[64]; long n = jm_hex(v, buf, sizeof buf);            // -1 if not hex / too long
 *   jm_free(root);
 *
 * Every lookup accepts NULL and returns NULL / a default, so chained lookups need one check.
 */
#ifndef OTAKEY_JSON_MIN_H
#define OTAKEY_JSON_MIN_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum jm_type { JM_NULL, JM_BOOL, JM_INT, JM_STR, JM_ARR, JM_OBJ };

struct jm_node {
    enum jm_type type;
    char *key;              /* member name when the parent is an object, else NULL */
    char *str;              /* JM_STR: NUL-terminated value */
    size_t slen;            /* JM_STR: length without the NUL (strings may hold \u0000) */
    long long num;          /* JM_INT, and JM_BOOL (0/1) */
    size_t count;           /* JM_ARR/JM_OBJ: number of children */
    struct jm_node *child;  /* first child */
    struct jm_node *next;   /* next sibling */
};

struct jm_parser_ {
    const char *p;
    const char *end;
    const char *err;
    int depth;
};

static inline void jm_free(struct jm_node *n)
{
    while (n != NULL) {
        struct jm_node *next = n->next;
        jm_free(n->child);
        free(n->key);
        free(n->str);
        free(n);
        n = next;
    }
}

static inline void jm_skip_ws_(struct jm_parser_ *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) {
        ps->p++;
    }
}

static inline int jm_hexval_(int c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* Parse a string literal at ps->p (which points at '"'); returns a malloc'd NUL-terminated copy. */
static inline char *jm_parse_string_(struct jm_parser_ *ps, size_t *out_len)
{
    const char *s = ps->p + 1;
    size_t cap = 0;
    const char *q = s;
    while (q < ps->end && *q != '"') {
        q += (*q == '\\' && q + 1 < ps->end) ? 2 : 1;
        cap++;
    }
    if (q >= ps->end) {
        ps->err = "unterminated string";
        return NULL;
    }
    char *out = (char *)malloc(cap * 4 + 1); /* \uXXXX may need up to 3 bytes; be generous */
    if (out == NULL) {
        ps->err = "out of memory";
        return NULL;
    }
    size_t n = 0;
    while (s < q) {
        char c = *s++;
        if (c != '\\') {
            out[n++] = c;
            continue;
        }
        c = *s++;
        switch (c) {
        case '"': out[n++] = '"'; break;
        case '\\': out[n++] = '\\'; break;
        case '/': out[n++] = '/'; break;
        case 'b': out[n++] = '\b'; break;
        case 'f': out[n++] = '\f'; break;
        case 'n': out[n++] = '\n'; break;
        case 'r': out[n++] = '\r'; break;
        case 't': out[n++] = '\t'; break;
        case 'u': {
            unsigned cp = 0;
            for (int i = 0; i < 4; i++) {
                int v = (s < ps->end) ? jm_hexval_((unsigned char)*s) : -1;
                if (v < 0) {
                    free(out);
                    ps->err = "bad \\u escape";
                    return NULL;
                }
                cp = (cp << 4) | (unsigned)v;
                s++;
            }
            /* The \u escape counted as one char above but advanced 6 bytes: q stays the bound. */
            if (cp < 0x80) {
                out[n++] = (char)cp;
            } else if (cp < 0x800) {
                out[n++] = (char)(0xC0 | (cp >> 6));
                out[n++] = (char)(0x80 | (cp & 0x3F));
            } else {
                out[n++] = (char)(0xE0 | (cp >> 12));
                out[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                out[n++] = (char)(0x80 | (cp & 0x3F));
            }
            break;
        }
        default:
            free(out);
            ps->err = "bad escape";
            return NULL;
        }
    }
    out[n] = '\0';
    *out_len = n;
    ps->p = q + 1;
    return out;
}

static inline struct jm_node *jm_parse_value_(struct jm_parser_ *ps);

static inline struct jm_node *jm_new_(enum jm_type t)
{
    struct jm_node *n = (struct jm_node *)calloc(1, sizeof *n);
    if (n != NULL) {
        n->type = t;
    }
    return n;
}

static inline int jm_lit_(struct jm_parser_ *ps, const char *lit)
{
    size_t l = strlen(lit);
    if ((size_t)(ps->end - ps->p) >= l && memcmp(ps->p, lit, l) == 0) {
        ps->p += l;
        return 1;
    }
    return 0;
}

static inline struct jm_node *jm_parse_container_(struct jm_parser_ *ps, int is_obj)
{
    struct jm_node *n = jm_new_(is_obj ? JM_OBJ : JM_ARR);
    struct jm_node **tail;
    if (n == NULL) {
        ps->err = "out of memory";
        return NULL;
    }
    tail = &n->child;
    if (++ps->depth > 64) {
        ps->err = "nesting too deep";
        jm_free(n);
        return NULL;
    }
    ps->p++; /* '{' or '[' */
    jm_skip_ws_(ps);
    if (ps->p < ps->end && *ps->p == (is_obj ? '}' : ']')) {
        ps->p++;
        ps->depth--;
        return n;
    }
    for (;;) {
        char *key = NULL;
        size_t klen;
        struct jm_node *v;
        jm_skip_ws_(ps);
        if (is_obj) {
            if (ps->p >= ps->end || *ps->p != '"') {
                ps->err = "expected member name";
                break;
            }
            key = jm_parse_string_(ps, &klen);
            if (key == NULL) {
                break;
            }
            jm_skip_ws_(ps);
            if (ps->p >= ps->end || *ps->p != ':') {
                free(key);
                ps->err = "expected ':'";
                break;
            }
            ps->p++;
        }
        v = jm_parse_value_(ps);
        if (v == NULL) {
            free(key);
            break;
        }
        v->key = key;
        *tail = v;
        tail = &v->next;
        n->count++;
        jm_skip_ws_(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == (is_obj ? '}' : ']')) {
            ps->p++;
            ps->depth--;
            return n;
        }
        ps->err = is_obj ? "expected ',' or '}'" : "expected ',' or ']'";
        break;
    }
    jm_free(n);
    return NULL;
}

static inline struct jm_node *jm_parse_value_(struct jm_parser_ *ps)
{
    struct jm_node *n;
    jm_skip_ws_(ps);
    if (ps->p >= ps->end) {
        ps->err = "unexpected end";
        return NULL;
    }
    switch (*ps->p) {
    case '{':
        return jm_parse_container_(ps, 1);
    case '[':
        return jm_parse_container_(ps, 0);
    case '"': {
        size_t len = 0;
        char *s = jm_parse_string_(ps, &len);
        if (s == NULL) {
            return NULL;
        }
        n = jm_new_(JM_STR);
        if (n == NULL) {
            free(s);
            ps->err = "out of memory";
            return NULL;
        }
        n->str = s;
        n->slen = len;
        return n;
    }
    default:
        break;
    }
    if (jm_lit_(ps, "null")) {
        return jm_new_(JM_NULL);
    }
    if (jm_lit_(ps, "true") || jm_lit_(ps, "false")) {
        n = jm_new_(JM_BOOL);
        if (n != NULL) {
            n->num = (ps->p[-2] == 'u'); /* "true" vs "false": only "true" ends in "ue" */
        }
        return n;
    }
    if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9')) {
        int neg = 0;
        unsigned long long v = 0;
        if (*ps->p == '-') {
            neg = 1;
            ps->p++;
        }
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') {
            ps->err = "bad number";
            return NULL;
        }
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
            v = v * 10u + (unsigned)(*ps->p - '0');
            ps->p++;
        }
        /* Fractions/exponents do not occur in our vectors; accept and drop them. */
        while (ps->p < ps->end && (*ps->p == '.' || *ps->p == 'e' || *ps->p == 'E' || *ps->p == '+' ||
                                   *ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9'))) {
            ps->p++;
        }
        n = jm_new_(JM_INT);
        if (n != NULL) {
            n->num = neg ? -(long long)v : (long long)v;
        }
        return n;
    }
    ps->err = "unexpected character";
    return NULL;
}

/* Parse len bytes of JSON text; NULL (and a message on stderr) on error. */
static inline struct jm_node *jm_parse(const char *text, size_t len)
{
    struct jm_parser_ ps = {text, text + len, NULL, 0};
    struct jm_node *root = jm_parse_value_(&ps);
    if (root != NULL) {
        jm_skip_ws_(&ps);
        if (ps.p != ps.end) {
            ps.err = "trailing data";
            jm_free(root);
            root = NULL;
        }
    }
    if (root == NULL) {
        fprintf(stderr, "json_min: %s at offset %ld\n", ps.err ? ps.err : "error",
                (long)(ps.p - text));
    }
    return root;
}

/* Read and parse a file (path relative to the working directory: tests run at the repo root). */
static inline struct jm_node *jm_load(const char *path)
{
    FILE *f = fopen(path, "rb");
    long size;
    char *buf;
    struct jm_node *root;
    if (f == NULL) {
        fprintf(stderr, "json_min: cannot open %s\n", path);
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return NULL;
    }
    buf = (char *)malloc((size_t)size + 1);
    if (buf == NULL || fread(buf, 1, (size_t)size, f) != (size_t)size) {
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    buf[size] = '\0';
    root = jm_parse(buf, (size_t)size);
    free(buf);
    if (root == NULL) {
        fprintf(stderr, "json_min: in %s\n", path);
    }
    return root;
}

/* Member of an object by name, or NULL. */
static inline const struct jm_node *jm_member(const struct jm_node *obj, const char *key)
{
    if (obj == NULL || obj->type != JM_OBJ) {
        return NULL;
    }
    for (const struct jm_node *c = obj->child; c != NULL; c = c->next) {
        if (strcmp(c->key, key) == 0) {
            return c;
        }
    }
    return NULL;
}

/* i-th child of an array (or object, in document order), or NULL. */
static inline const struct jm_node *jm_at(const struct jm_node *n, size_t i)
{
    if (n == NULL || (n->type != JM_ARR && n->type != JM_OBJ)) {
        return NULL;
    }
    const struct jm_node *c = n->child;
    while (c != NULL && i > 0) {
        c = c->next;
        i--;
    }
    return c;
}

/*
 * Follow a '.'-separated path: each part names an object member, or (all digits) indexes an
 * array. "" returns n itself. Example: jm_path(root, "flows.2.messages.0.hex").
 */
static inline const struct jm_node *jm_path(const struct jm_node *n, const char *path)
{
    char part[128];
    while (n != NULL && *path != '\0') {
        size_t l = strcspn(path, ".");
        int digits = (l > 0);
        if (l >= sizeof part) {
            return NULL;
        }
        memcpy(part, path, l);
        part[l] = '\0';
        for (size_t i = 0; i < l; i++) {
            if (part[i] < '0' || part[i] > '9') {
                digits = 0;
            }
        }
        if (n->type == JM_ARR && digits) {
            n = jm_at(n, (size_t)strtoul(part, NULL, 10));
        } else {
            n = jm_member(n, part);
        }
        path += l;
        if (*path == '.') {
            path++;
        }
    }
    return n;
}

/* Number of children of an array/object; 0 otherwise. */
static inline size_t jm_len(const struct jm_node *n)
{
    return (n != NULL && (n->type == JM_ARR || n->type == JM_OBJ)) ? n->count : 0;
}

static inline int jm_is_null(const struct jm_node *n)
{
    return n != NULL && n->type == JM_NULL;
}

/* String value, or NULL if n is absent or not a string. */
static inline const char *jm_str(const struct jm_node *n)
{
    return (n != NULL && n->type == JM_STR) ? n->str : NULL;
}

/* Integer (or bool as 0/1) value, or dflt. */
static inline long long jm_int(const struct jm_node *n, long long dflt)
{
    return (n != NULL && (n->type == JM_INT || n->type == JM_BOOL)) ? n->num : dflt;
}

static inline int jm_bool(const struct jm_node *n, int dflt)
{
    return (n != NULL && n->type == JM_BOOL) ? (int)n->num : dflt;
}

/*
 * Decode a hex string node into buf. Returns the byte count, or -1 if n is not a string, has an
 * odd length or a non-hex digit, or would not fit in cap bytes.
 */
static inline long jm_hex(const struct jm_node *n, uint8_t *buf, size_t cap)
{
    if (n == NULL || n->type != JM_STR || (n->slen & 1u) != 0 || n->slen / 2 > cap) {
        return -1;
    }
    for (size_t i = 0; i < n->slen / 2; i++) {
        int hi = jm_hexval_((unsigned char)n->str[2 * i]);
        int lo = jm_hexval_((unsigned char)n->str[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            return -1;
        }
        buf[i] = (uint8_t)((hi << 4) | lo);
    }
    return (long)(n->slen / 2);
}

/* Convenience: jm_hex(jm_path(n, path), buf, cap). */
static inline long jm_hex_at(const struct jm_node *n, const char *path, uint8_t *buf, size_t cap)
{
    return jm_hex(jm_path(n, path), buf, cap);
}

/* Length in bytes a hex string node decodes to, or -1. */
static inline long jm_hex_len(const struct jm_node *n)
{
    if (n == NULL || n->type != JM_STR || (n->slen & 1u) != 0) {
        return -1;
    }
    return (long)(n->slen / 2);
}

#endif /* OTAKEY_JSON_MIN_H */
