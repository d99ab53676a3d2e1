/* Wine 8.0 (Debian 12) has no bcryptprimitives.dll, whose ProcessPrng the
 * Rust standard library calls for random bytes on Windows since 1.78. This
 * stand-in, built by tests/windows/wine.sh into the test prefix only, takes
 * them from RtlGenRandom (advapi32's SystemFunction036), which Wine has. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG n = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
