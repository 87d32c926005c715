"""PCM device statistics: the model of Joshi et al. (Nat. Commun. 11, 2473, 2020) as implemented in
IBM aihwkit's ``PCMLikeNoiseModel`` (DESIGN.md section 4).

Conductances are in microsiemens. Every random draw takes an explicit ``numpy.random.Generator``;
nothing here keeps state, so the same generator state gives the same devices bit for bit.

Equations (x = G_T / g_max, G_T the target conductance):
- (P1) programming noise:  sigma_prog = (0.26348 + 1.9650 x - 1.1731 x^2) * g_max / 25
                           G_p = max(G_T + s_prog * sigma_prog * N(0, 1), 0)
- (D1) drift exponent:     g = max(x, 1e-7); mu = clip(-0.0155 ln g + 0.0244, 0.049, 0.1)
                           sd = clip(-0.0125 ln g - 0.0059, 0.008, 0.045); nu = s_drift * |mu + sd N(0, 1)|
- (D2) drift law:          G_d(t) = G_p * ((t + t0) / t0)^(-nu)
- (R1) 1/f read noise:     Q = min(0.0088 / max((G_p / g_max)^0.65, 1e-3), 0.2)
                           sigma_r = |G_d| * Q * sqrt(ln((t + t0 + t_read) / (2 t_read)))
                           G(t) = max(G_d + s_read * sigma_r * N(0, 1), 0)
(s_prog, s_drift, s_read are the chip YAML's noise scales; 1 reproduces aihwkit.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import DeviceConfig

# (P1) aihwkit PCMLikeNoiseModel.prog_coeff, in uS for g_max = 25 uS
PROG_COEFF = (0.26348, 1.9650, -1.1731)
PROG_COEFF_G_MAX_US = 25.0
# (D1) drift exponent statistics vs. log relative target conductance (Joshi 2020, Methods)
DRIFT_MU = (-0.0155, 0.0244, 0.049, 0.1)          # slope, intercept, clip low, clip high
DRIFT_SD = (-0.0125, -0.0059, 0.008, 0.045)
DRIFT_G_MIN = 1e-7
# (R1) read noise: Q_s = min(0.0088 / max(x^0.65, 1e-3), 0.2)
READ_Q = (0.0088, 0.65, 1e-3, 0.2)                 # numerator, exponent, floor, cap


@dataclass(frozen=True)
class PCMModel:
    """Device statistics with the chip's parameters. ``ideal`` devices are exact and never drift."""
    g_max_us: float = 25.0
    t0_s: float = 20.0
    t_read_ns: float = 250.0
    programming_noise_scale: float = 1.0
    read_noise_scale: float = 1.0
    drift_scale: float = 1.0
    ideal: bool = False

    @classmethod
    def from_config(cls, device: DeviceConfig) -> "PCMModel":
        return cls(g_max_us=device.g_max_us, t0_s=device.t0_s, t_read_ns=device.t_read_ns,
                   programming_noise_scale=device.programming_noise_scale,
                   read_noise_scale=device.read_noise_scale, drift_scale=device.drift_scale,
                   ideal=device.model == "ideal")

    # ---- programming -------------------------------------------------------------------------
    def programming_sigma_us(self, g_target_us: np.ndarray) -> np.ndarray:
        """(P1) standard deviation of the programmed conductance around the target."""
        x = np.asarray(g_target_us, np.float64) / self.g_max_us
        c0, c1, c2 = PROG_COEFF
        return (c0 + c1 * x + c2 * x * x) * (self.g_max_us / PROG_COEFF_G_MAX_US)

    def program(self, g_target_us: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(P1) programmed conductances G_p, one draw per device."""
        g = np.asarray(g_target_us, np.float64)
        if self.ideal or self.programming_noise_scale == 0:
            return g.copy()
        noise = rng.standard_normal(g.shape)
        return np.maximum(g + self.programming_noise_scale * self.programming_sigma_us(g) * noise, 0.0)

    # ---- drift -------------------------------------------------------------------------------
    def drift_stats(self, g_target_us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(D1) mean and standard deviation of the (unfolded) drift exponent for each target."""
        lg = np.log(np.maximum(np.asarray(g_target_us, np.float64) / self.g_max_us, DRIFT_G_MIN))
        mu = np.clip(DRIFT_MU[0] * lg + DRIFT_MU[1], DRIFT_MU[2], DRIFT_MU[3])
        sd = np.clip(DRIFT_SD[0] * lg + DRIFT_SD[1], DRIFT_SD[2], DRIFT_SD[3])
        return mu, sd

    def drift_exponents(self, g_target_us: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(D1) nu = s_drift * |mu + sd N(0,1)|, drawn once at programming."""
        g = np.asarray(g_target_us, np.float64)
        if self.ideal or self.drift_scale == 0:
            return np.zeros(g.shape)
        mu, sd = self.drift_stats(g)
        return self.drift_scale * np.abs(mu + sd * rng.standard_normal(g.shape))

    def drift(self, g_prog_us: np.ndarray, nu: np.ndarray, t_s: float) -> np.ndarray:
        """(D2) G_d(t) = G_p ((t + t0) / t0)^(-nu), t seconds after programming."""
        return np.asarray(g_prog_us, np.float64) * ((t_s + self.t0_s) / self.t0_s) ** (-np.asarray(nu))

    # ---- read noise --------------------------------------------------------------------------
    def read_q(self, g_prog_us: np.ndarray) -> np.ndarray:
        """(R1) relative 1/f noise amplitude Q_s of each device."""
        num, expo, floor, cap = READ_Q
        x = np.abs(np.asarray(g_prog_us, np.float64)) / self.g_max_us
        return np.minimum(num / np.maximum(x ** expo, floor), cap)

    def read_sigma_us(self, g_drift_us: np.ndarray, g_prog_us: np.ndarray, t_s: float) -> np.ndarray:
        """(R1) sigma_r = |G_d| Q_s sqrt(ln((t + t0 + t_read) / (2 t_read)))."""
        t_read_s = self.t_read_ns * 1e-9
        spread = np.sqrt(np.log((t_s + self.t0_s + t_read_s) / (2.0 * t_read_s)))
        return np.abs(g_drift_us) * self.read_q(g_prog_us) * spread

    def read(self, g_drift_us: np.ndarray, g_prog_us: np.ndarray, t_s: float,
             rng: np.random.Generator) -> np.ndarray:
        """(R1) conductances as read at time t (one frozen draw per device)."""
        g = np.asarray(g_drift_us, np.float64)
        if self.ideal or self.read_noise_scale == 0:
            return g.copy()
        sigma = self.read_sigma_us(g, g_prog_us, t_s)
        return np.maximum(g + self.read_noise_scale * sigma * rng.standard_normal(g.shape), 0.0)

    def at(self, g_prog_us: np.ndarray, nu: np.ndarray, t_s: float,
           rng: np.random.Generator) -> np.ndarray:
        """(D2) then (R1): the conductances read t seconds after programming."""
        return self.read(self.drift(g_prog_us, nu, t_s), g_prog_us, t_s, rng)

    def sample_read(self, g_drift_us: np.ndarray, sigma_us: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
        """(R1) one read of devices whose drifted conductance and read-noise sigma (from
        :meth:`read_sigma_us`, noise scale not yet applied) are known: max(G_d + s_read sigma N, 0),
        in the dtype of ``g_drift_us`` (float32 keeps a read of a whole chip cheap)."""
        g = np.asarray(g_drift_us)
        if self.ideal or self.read_noise_scale == 0:
            return g.copy()
        noise = rng.standard_normal(g.shape, dtype=g.dtype if g.dtype == np.float32 else np.float64)
        noise *= sigma_us
        if self.read_noise_scale != 1:
            noise *= g.dtype.type(self.read_noise_scale)
        noise += g
        return np.maximum(noise, 0, out=noise)


def targets(w: np.ndarray, scale_us_per_unit: np.ndarray | float, g_max_us: float,
            devices_per_polarity: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Differential mapping (DESIGN 4) onto ``devices_per_polarity`` devices per sign: the total
    targets G+ = clip(w s, 0, D g_max), G- = clip(-w s, 0, D g_max) are split equally, so each
    device's target (returned, one per weight) is the total / D and never exceeds g_max."""
    d = int(devices_per_polarity)
    if d < 1:
        raise ValueError(f"devices_per_polarity must be >= 1, got {devices_per_polarity}")
    ws = np.asarray(w, np.float64) * scale_us_per_unit
    return np.clip(ws, 0.0, d * g_max_us) / d, np.clip(-ws, 0.0, d * g_max_us) / d
