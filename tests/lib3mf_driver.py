"""The lib3mf ctypes glue shared by tests (test-only; product code never imports lib3mf).

lib3mf 2.5's generated Python binding declares `KeyWrappingCallback` and
`ContentEncryptionCallback` with 5 parameters, while the C ABI
(`lib3mf_types.h`) has 8: (handle, in_size, in_buf, out_size, out_needed*,
out_buf, user_data, status*). We declare our own CFUNCTYPE and set the
`argtypes` of the four registration functions. Its writer also sizes the
wrapped-key buffer from our first (query) call but passes the plain key size
(32) as `out_size` in the second call, and a NULL `out_needed`; the wrap
callback therefore writes the full RSA block and guards every pointer.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from ctypes import POINTER, c_uint8, c_uint64, c_void_p
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lib3mf  # a missing lib3mf must fail loudly, never skip
import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

CALLBACK = ctypes.CFUNCTYPE(
    None,
    c_void_p,
    c_uint64,
    POINTER(c_uint8),
    c_uint64,
    POINTER(c_uint64),
    POINTER(c_uint8),
    c_void_p,
    POINTER(c_uint64),
)
_HASH = {160: hashes.SHA1, 256: hashes.SHA256}


@dataclass
class CallbackLog:
    """What the callbacks saw; `errors` is asserted empty by the driver."""

    wraps: list[tuple[str, str]] = field(default_factory=list)
    aads: list[bytes] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _set(ptr: Any, value: int) -> None:
    if ptr:
        ptr[0] = value


class Lib3mfDriver:
    """Drives lib3mf's Secure Content reader and writer with Python crypto."""

    def __init__(self) -> None:
        self.w = lib3mf.Wrapper()
        for side in ("reader", "writer"):
            fn = getattr(self.w.lib, f"lib3mf_{side}_addkeywrappingcallback")
            fn.argtypes = [c_void_p, ctypes.c_char_p, CALLBACK, c_void_p]
            fn = getattr(self.w.lib, f"lib3mf_{side}_setcontentencryptioncallback")
            fn.argtypes = [c_void_p, CALLBACK, c_void_p]
        self.log = CallbackLog()

    # ---------------------------------------------------------------- callbacks
    def _oaep(self, handle: int) -> padding.OAEP:
        right = lib3mf.AccessRight(handle, self.w)
        self.w.Acquire(right)
        mgf, digest = right.GetMgfAlgorithm(), right.GetDigestMethod()
        self.log.wraps.append((mgf.name, digest.name))
        return padding.OAEP(
            mgf=padding.MGF1(_HASH[int(mgf)]()), algorithm=_HASH[int(digest)](), label=None
        )

    def wrap_callback(self, transform: Callable[[bytes, padding.OAEP], bytes]) -> Any:
        """Key (un)wrapping callback: query call reports the size, fill call writes it."""

        def cb(
            handle: int,
            n_in: int,
            p_in: Any,
            n_out: int,
            needed: Any,
            p_out: Any,
            user: Any,
            status: Any,
        ) -> None:
            try:
                result = transform(ctypes.string_at(p_in, n_in), self._oaep(handle))
                if p_out:  # n_out is unreliable (lib3mf passes 32), buffer is ours-sized
                    ctypes.memmove(p_out, result, len(result))
                _set(needed, len(result))
                _set(status, len(result))
            except Exception as exc:
                self.log.errors.append(f"wrap: {exc!r}")
                _set(status, 0)

        return CALLBACK(cb)

    def content_callback(self, decrypt: bool) -> Any:
        """AES-256-GCM callback, one cipher context per descriptor, tag on the final call."""
        contexts: dict[int, Any] = {}

        def cb(
            handle: int,
            n_in: int,
            p_in: Any,
            n_out: int,
            needed: Any,
            p_out: Any,
            user: Any,
            status: Any,
        ) -> None:
            try:
                params = lib3mf.ContentEncryptionParams(handle, self.w)
                self.w.Acquire(params)
                ctx = contexts.get(params.GetDescriptor()) or self._new_context(params, decrypt)
                contexts[params.GetDescriptor()] = ctx
                if n_in == 0 or not p_in:
                    ctx.finalize()
                    if not decrypt:
                        params.SetAuthenticationTag(list(ctx.tag))
                    del contexts[params.GetDescriptor()]
                    _set(needed, 16)
                    _set(status, 16)
                    return
                if not p_out:  # size query
                    _set(needed, n_in)
                    _set(status, n_in)
                    return
                out = ctx.update(ctypes.string_at(p_in, n_in))
                ctypes.memmove(p_out, out, len(out))
                _set(needed, len(out))
                _set(status, len(out))
            except Exception as exc:
                self.log.errors.append(f"content: {exc!r}")
                _set(status, 0)

        return CALLBACK(cb)

    def _new_context(self, params: Any, decrypt: bool) -> Any:
        key, iv = bytes(params.GetKey()), bytes(params.GetInitializationVector())
        aad = bytes(params.GetAdditionalAuthenticationData())
        self.log.aads.append(aad)
        if decrypt:
            tag = bytes(params.GetAuthenticationTag())
            ctx = Cipher(algorithms.AES(key), modes.GCM(iv, tag)).decryptor()
        else:
            ctx = Cipher(algorithms.AES(key), modes.GCM(iv)).encryptor()
        if aad:
            ctx.authenticate_additional_data(aad)
        return ctx

    # ---------------------------------------------------------------- geometry
    def set_geometry(self, mesh: Any, vertices: np.ndarray, faces: np.ndarray) -> None:
        v = np.ascontiguousarray(vertices, dtype=np.float32)
        f = np.ascontiguousarray(faces, dtype=np.uint32)
        vb = (lib3mf.Position * len(v)).from_buffer(v)
        fb = (lib3mf.Triangle * len(f)).from_buffer(f)
        self.w.checkError(
            mesh,
            self.w.lib.lib3mf_meshobject_setgeometry(
                mesh._handle, c_uint64(len(v)), vb, c_uint64(len(f)), fb
            ),
        )

    def get_geometry(self, mesh: Any) -> tuple[np.ndarray, np.ndarray]:
        nv, nt, need = mesh.GetVertexCount(), mesh.GetTriangleCount(), c_uint64(0)
        vb, tb = (lib3mf.Position * nv)(), (lib3mf.Triangle * nt)()
        self.w.checkError(
            mesh, self.w.lib.lib3mf_meshobject_getvertices(mesh._handle, c_uint64(nv), need, vb)
        )
        self.w.checkError(
            mesh,
            self.w.lib.lib3mf_meshobject_gettriangleindices(mesh._handle, c_uint64(nt), need, tb),
        )
        return (
            np.frombuffer(vb, np.float32).reshape(-1, 3).copy(),
            np.frombuffer(tb, np.uint32).reshape(-1, 3).astype(np.int64),
        )

    # ---------------------------------------------------------------- read / write
    def read_secure(
        self, path: Path, consumer_id: str, private_key: rsa.RSAPrivateKey
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Read a Secure Content 3MF; return its single mesh and the warning count."""
        model = self.w.CreateModel()
        reader = model.QueryReader("3mf")
        wrap = self.wrap_callback(lambda data, pad: private_key.decrypt(data, pad))
        content = self.content_callback(decrypt=True)
        self.w.checkError(
            reader,
            self.w.lib.lib3mf_reader_addkeywrappingcallback(
                reader._handle, consumer_id.encode(), wrap, None
            ),
        )
        self.w.checkError(
            reader,
            self.w.lib.lib3mf_reader_setcontentencryptioncallback(reader._handle, content, None),
        )
        reader.ReadFromFile(str(path))
        meshes = model.GetMeshObjects()
        assert meshes.MoveNext(), "lib3mf found no mesh object"
        v, f = self.get_geometry(meshes.GetCurrentMeshObject())
        return v, f, reader.GetWarningCount()

    def write_secure(
        self,
        path: Path,
        vertices: np.ndarray,
        faces: np.ndarray,
        *,
        consumer_id: str,
        key_id: str,
        public_key: rsa.RSAPublicKey,
        pem: str,
        sha256: bool,
        deflate: bool,
    ) -> None:
        """Write a mesh as a Secure Content 3MF for one consumer, lib3mf doing the packaging."""
        model = self.w.CreateModel()
        mesh = model.AddMeshObject()
        self.set_geometry(mesh, vertices, faces)
        part = model.FindOrCreatePackagePart("/3D/securemesh.model")
        mesh.SetPackagePart(part)
        model.AddBuildItem(mesh, self.w.GetIdentityTransform())
        store = model.GetKeyStore()
        consumer = store.AddConsumer(consumer_id, key_id, pem)
        group = store.AddResourceDataGroup()
        mgf = lib3mf.MgfAlgorithm.MGF1_SHA256 if sha256 else lib3mf.MgfAlgorithm.MGF1_SHA1
        digest = lib3mf.DigestMethod.SHA256 if sha256 else lib3mf.DigestMethod.SHA1
        group.AddAccessRight(consumer, lib3mf.WrappingAlgorithm.RSA_OAEP, mgf, digest)
        comp = lib3mf.Compression.Deflate if deflate else lib3mf.Compression.NoCompression
        store.AddResourceData(group, part, lib3mf.EncryptionAlgorithm.AES256_GCM, comp, [])
        writer = model.QueryWriter("3mf")
        wrap = self.wrap_callback(lambda data, pad: public_key.encrypt(data, pad))
        content = self.content_callback(decrypt=False)
        self.w.checkError(
            writer,
            self.w.lib.lib3mf_writer_addkeywrappingcallback(
                writer._handle, consumer_id.encode(), wrap, None
            ),
        )
        self.w.checkError(
            writer,
            self.w.lib.lib3mf_writer_setcontentencryptioncallback(writer._handle, content, None),
        )
        writer.WriteToFile(str(path))
