// SPDX-License-Identifier: MIT
// Certificates made at test time with OpenSSL's API (no private key is ever committed): a CA,
// a leaf it signs for localhost/127.0.0.1/::1 (server or client), an expired leaf, and a
// self-signed leaf.
#pragma once

#include <memory>
#include <stdexcept>
#include <string>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

namespace netloop::test {

struct pem_pair {
    std::string cert;
    std::string key;
};

struct test_pki {
    pem_pair ca;           // self-signed CA, CA:TRUE
    pem_pair leaf;         // signed by `ca`, valid now, for localhost, 127.0.0.1 and ::1
    pem_pair expired;      // signed by `ca`, for the same names, expired an hour ago
    pem_pair self_signed;  // for the same names, signed by itself
};

namespace certs_detail {

struct key_free {
    void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct x509_free {
    void operator()(X509* x) const { X509_free(x); }
};
struct bio_free {
    void operator()(BIO* b) const { BIO_free(b); }
};
using key_ptr = std::unique_ptr<EVP_PKEY, key_free>;
using x509_ptr = std::unique_ptr<X509, x509_free>;

inline void check(bool ok, const char* what) {
    if (!ok) throw std::runtime_error(std::string("test certificates: ") + what);
}

inline key_ptr new_key() {
    key_ptr k(EVP_EC_gen("P-256"));
    check(k != nullptr, "EC key");
    return k;
}

inline void add_extension(X509* cert, X509* issuer, int nid, const char* value) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
    check(ext != nullptr, "extension");
    X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
}

// A certificate for `key` named `cn`, valid from `from_seconds` to `to_seconds` (relative to
// now), signed by `issuer`/`issuer_key` (itself when null).
inline x509_ptr make_cert(EVP_PKEY* key, const char* cn, long serial, long from_seconds,
                          long to_seconds, bool is_ca, X509* issuer, EVP_PKEY* issuer_key) {
    x509_ptr cert(X509_new());
    check(cert != nullptr, "X509_new");
    X509_set_version(cert.get(), 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial);
    X509_gmtime_adj(X509_getm_notBefore(cert.get()), from_seconds);
    X509_gmtime_adj(X509_getm_notAfter(cert.get()), to_seconds);
    X509_set_pubkey(cert.get(), key);
    X509_NAME* name = X509_get_subject_name(cert.get());
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn),
                               -1, -1, 0);
    X509* signer = issuer != nullptr ? issuer : cert.get();
    X509_set_issuer_name(cert.get(), X509_get_subject_name(signer));
    if (is_ca) {
        add_extension(cert.get(), signer, NID_basic_constraints, "critical,CA:TRUE");
        add_extension(cert.get(), signer, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        add_extension(cert.get(), signer, NID_basic_constraints, "CA:FALSE");
        add_extension(cert.get(), signer, NID_subject_alt_name,
                      "DNS:localhost,IP:127.0.0.1,IP:::1");
        add_extension(cert.get(), signer, NID_ext_key_usage, "serverAuth,clientAuth");
    }
    check(X509_sign(cert.get(), issuer_key != nullptr ? issuer_key : key, EVP_sha256()) > 0,
          "sign");
    return cert;
}

inline std::string pem_of(X509* cert) {
    std::unique_ptr<BIO, bio_free> bio(BIO_new(BIO_s_mem()));
    check(PEM_write_bio_X509(bio.get(), cert) == 1, "PEM certificate");
    char* data = nullptr;
    long size = BIO_get_mem_data(bio.get(), &data);
    return std::string(data, static_cast<std::size_t>(size));
}

inline std::string pem_of(EVP_PKEY* key) {
    std::unique_ptr<BIO, bio_free> bio(BIO_new(BIO_s_mem()));
    check(PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) == 1,
          "PEM key");
    char* data = nullptr;
    long size = BIO_get_mem_data(bio.get(), &data);
    return std::string(data, static_cast<std::size_t>(size));
}

inline test_pki make_pki() {
    constexpr long day = 24 * 3600;
    auto ca_key = new_key();
    auto ca = make_cert(ca_key.get(), "netloop test CA", 1, -3600, day, true, nullptr, nullptr);
    auto leaf_key = new_key();
    auto leaf =
        make_cert(leaf_key.get(), "localhost", 2, -3600, day, false, ca.get(), ca_key.get());
    auto old_key = new_key();
    auto expired =
        make_cert(old_key.get(), "localhost", 3, -2 * day, -3600, false, ca.get(), ca_key.get());
    auto own_key = new_key();
    auto self = make_cert(own_key.get(), "localhost", 4, -3600, day, false, nullptr, nullptr);
    return {{pem_of(ca.get()), pem_of(ca_key.get())},
            {pem_of(leaf.get()), pem_of(leaf_key.get())},
            {pem_of(expired.get()), pem_of(old_key.get())},
            {pem_of(self.get()), pem_of(own_key.get())}};
}

}  // namespace certs_detail

// One set per test process: making keys is the slow part.
inline const test_pki& pki() {
    static const test_pki instance = certs_detail::make_pki();
    return instance;
}

}  // namespace netloop::test
