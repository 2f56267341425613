//! Seeded generator of the sandbox's catalog, heavy on the names and prices that break
//! naive sync code: Spanish accents, emoji, apostrophes and quotes, names over 100
//! characters, names differing only by case, exact duplicates, colons (invalid in a
//! QuickBooks name), and prices in COP, USD and zero-decimal JPY/CLP.

/// SplitMix64: tiny, fast, and the same sequence for the same seed forever (the
/// sandbox world must not change when a dependency updates its RNG).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    /// Stripe-style id: `prefix_` + 14 base62 characters.
    pub fn stripe_id(&mut self, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut id = String::with_capacity(prefix.len() + 15);
        id.push_str(prefix);
        id.push('_');
        for _ in 0..14 {
            id.push(ALPHABET[self.below(62) as usize] as char);
        }
        id
    }
    pub fn hex(&mut self, bytes: usize) -> String {
        (0..bytes)
            .map(|_| format!("{:02x}", self.below(256)))
            .collect()
    }
}

const ADJECTIVES: &[&str] = &[
    "Premium",
    "Básico",
    "Pequeño",
    "Año Nuevo",
    "Corazón",
    "Ñandú",
    "Jalapeño",
    "Edición Única",
    "Orgánico",
    "Clásico",
    "Exprés",
    "Plus",
    "Pro",
    "Lite",
    "Familiar",
];
const NOUNS: &[&str] = &[
    "Café",
    "Arepa",
    "Plan",
    "Suscripción",
    "Canción",
    "Acción",
    "Tamal",
    "Empanada",
    "Licencia",
    "Asesoría",
    "Mantenimiento",
    "Membresía",
    "Consultoría",
    "Bandeja Paisa",
    "Ajiaco",
];
/// The emoji that end some product names (a hard case for every terminal: 🇨🇴 is two
/// code points); public for the console's rendering tests.
pub const EMOJI: &[&str] = &["☕", "🌮", "🚀", "🇨🇴", "✨", "🎧", "📦"];
const QUOTED: &[&str] = &[
    "O'Brien's Blend",
    "Señor's 'Best' Roast",
    "The \"Deluxe\" Pack",
    "Rock 'n' Roll",
    "Don Juan's \"Reserva\"",
    "It's a Café",
];

/// One generated product: name, description, and its default price (if any).
#[derive(Debug, Clone)]
pub struct GenProduct {
    pub name: String,
    pub description: Option<String>,
    pub price: Option<(i64, &'static str)>,
    pub active: bool,
}

/// Produces the `i`-th product of a world. Names repeat on purpose (exact duplicates and
/// case-only variants); every tenth name or so carries a hard case.
pub fn product(rng: &mut Rng, i: usize) -> GenProduct {
    let base = format!("{} {}", rng.pick(NOUNS), rng.pick(ADJECTIVES));
    let name = match rng.below(20) {
        0 => format!("{base} {}", rng.pick(EMOJI)),
        1 => rng.pick(QUOTED).to_string(),
        2 => format!(
            "{base} — edición coleccionista con envío a todo el país, garantía extendida y soporte técnico prioritario {i}"
        ),
        3 => base.to_uppercase(),
        4 => base.to_lowercase(),
        5 => format!("{base}: Mensual"),
        6 => format!("  {base}  #{i}"),
        7 => base.clone(),
        _ => format!("{base} #{i}"),
    };
    let description = rng
        .chance(0.5)
        .then(|| format!("{} — descripción {i}", rng.pick(NOUNS)));
    let price = if rng.chance(0.05) {
        None
    } else {
        Some(price(rng))
    };
    GenProduct {
        name,
        description,
        price,
        active: !rng.chance(0.03),
    }
}

/// A price in minor units of its currency (JPY and CLP are zero-decimal).
pub fn price(rng: &mut Rng) -> (i64, &'static str) {
    match rng.below(10) {
        0..=4 => ((rng.below(500) as i64 + 1) * 100_000, "cop"), // 1.000–500.000 COP
        5..=7 => (rng.below(99_999) as i64 + 99, "usd"),
        8 => (rng.below(50_000) as i64 + 100, "jpy"),
        _ => (rng.below(200_000) as i64 + 500, "clp"),
    }
}

const BUYERS: &[(&str, &str)] = &[
    ("Comercializadora Andina S.A.S.", "900123456"),
    ("Distribuciones El Dorado Ltda.", "800199436"),
    ("Café Montaña S.A.S.", "901555210"),
    ("Ferretería La Ñ", "830045771"),
    ("Panadería Doña Inés", "79654123"),
    ("Transportes Río Magdalena S.A.", "890903938"),
];

/// A buyer of a paid invoice: name and tax id (NIT or cédula). About one in twenty is a
/// consumer without one (DIAN's generic final consumer applies).
pub fn buyer(rng: &mut Rng) -> (&'static str, Option<&'static str>) {
    if rng.chance(0.05) {
        ("Consumidor final", None)
    } else {
        let (name, id) = rng.pick(BUYERS);
        (name, Some(id))
    }
}

/// A line amount in COP cents: 10.000–2.000.000 pesos.
pub fn line_amount(rng: &mut Rng) -> i64 {
    (rng.below(1_990) as i64 + 10) * 1_000 * 100
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_world() {
        let a: Vec<_> = (0..50).map(|i| product(&mut Rng::new(7), i).name).collect();
        let b: Vec<_> = (0..50).map(|i| product(&mut Rng::new(7), i).name).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn generator_produces_every_hard_case() {
        let mut rng = Rng::new(1);
        let names: Vec<String> = (0..2000).map(|i| product(&mut rng, i).name).collect();
        assert!(names.iter().any(|n| n.chars().count() > 100));
        assert!(names.iter().any(|n| n.contains('\'')));
        assert!(names.iter().any(|n| n.contains('"')));
        assert!(names.iter().any(|n| n.contains(':')));
        assert!(names.iter().any(|n| n.contains('ñ') || n.contains('é')));
        assert!(
            names
                .iter()
                .any(|n| !n.is_ascii() && n.chars().any(|c| c as u32 > 0xFFFF))
        );
        let lower: std::collections::HashSet<_> = names.iter().map(|n| n.to_lowercase()).collect();
        assert!(lower.len() < names.len(), "case-only duplicates expected");
    }
}
