#!/usr/bin/env bash
# Which x86-64 vector instructions this machine executes, next to what /proc/cpuinfo
# advertises: each instruction runs in a tiny program (inline assembly, so no compiler flag
# or optimiser decides), and an illegal one dies with SIGILL. A VM can advertise what its
# host cannot run, or hide what it can; a llama.cpp build must only use what runs on every
# machine its cached wheel may land on (hack/install-llama.sh builds AVX2 + FMA + F16C + BMI2).
# Usage: bash hack/probe-cpu-isa.sh      # needs cc (gcc or clang)
set -euo pipefail

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "

probe() {  # name, cpuinfo flag, instruction (AT&T syntax)
  printf 'int main(void){__asm__ volatile("%s":::"xmm0","rax","memory");return 0;}\n' "$3" \
    >"$tmp/$1.c"
  local adv=no verdict
  [[ "$flags" == *" $2 "* ]] && adv=yes
  if ! cc -O0 -o "$tmp/$1" "$tmp/$1.c" 2>/dev/null; then
    verdict="(assembler does not know it)"
  elif sh -c '"$0"; exit $?' "$tmp/$1" 2>/dev/null; then  # the inner sh reports SIGILL, quietly
    verdict=runs
  else
    verdict="fails (exit $?: SIGILL is 132)"
  fi
  printf '%-12s advertised: %-3s  %s\n' "$1" "$adv" "$verdict"
}

probe sse4.2 sse4_2 "crc32l %%eax, %%eax"
probe avx avx "vaddps %%ymm0, %%ymm0, %%ymm0"
probe avx2 avx2 "vpaddd %%ymm0, %%ymm0, %%ymm0"
probe fma fma "vfmadd231ps %%ymm0, %%ymm0, %%ymm0"
probe f16c f16c "vcvtph2ps %%xmm0, %%ymm0"
probe bmi2 bmi2 "pdep %%rax, %%rax, %%rax"
probe vaes vaes "vaesenc %%ymm0, %%ymm0, %%ymm0"
probe avx_vnni avx_vnni ".byte 0xc4,0xe2,0x7d,0x50,0xc0"  # {vex} vpdpbusd ymm0, ymm0, ymm0
probe avx512f avx512f "vaddps %%zmm0, %%zmm0, %%zmm0"
probe avx512bw avx512bw "vpaddb %%zmm0, %%zmm0, %%zmm0"
probe avx512_vnni avx512_vnni "vpdpbusd %%zmm0, %%zmm0, %%zmm0"
probe avx512_bf16 avx512_bf16 "vdpbf16ps %%zmm0, %%zmm0, %%zmm0"
