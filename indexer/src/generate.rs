//! Deterministic synthetic customers for benchmarks and tests.
//!
//! [`customers`]`(seed, n)` yields the same `n` customers for the same seed,
//! on any machine: Singapore-style multi-cultural names (Chinese, some in Han
//! characters, Malay, Indian, Western), 1-2 phone numbers (mostly Singapore
//! mobiles, some Malaysian, Indian and UK ones), 0-2 emails derived from the
//! name, and 0-10 recent engagements spread over every channel.
//!
//! Customer `i` depends only on `(seed, i)` ([`customer`]), so a benchmark
//! can regenerate any one of them (to look up its phone) without keeping the
//! whole set. Singaporean first phones never repeat among the first 16
//! million customers (a permutation of the mobile range over the customer
//! index); foreign first phones and all second phones are drawn at random,
//! so a few numbers are shared, as household numbers are.
//!
//! The PRNG is splitmix64: small, fast, and good enough for test data; it is
//! not for anything that needs unpredictability.

use std::str::FromStr;
use std::time::Duration;

use crm_models::time::{self, Timestamp};
use crm_models::{
    CallStatus, Customer, CustomerId, Direction, Email, Engagement, EngagementDetail, EngagementId,
    PayloadType, PhoneNumber, Source,
};

use crate::doc::IndexedCustomer;

/// Most engagements generated per customer.
pub const MAX_ENGAGEMENTS: usize = 10;

/// How many ways [`typed_phone`] writes a number (variants wrap around).
pub const TYPED_VARIANTS: usize = 4;

/// splitmix64 (Steele, Lea, Flood 2014): one `u64` of state.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is negligible here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Which names the customers get.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Names {
    /// Hundreds of given and family names across four cultures, in the
    /// orders each culture writes them (`Tan Wei Ming`, `Nur Aisyah binti
    /// Rahman`, `Priya d/o Ramesh`, some in Han characters).
    #[default]
    Wide,
    /// A realistic low-variety pool, as a Singapore customer base looks to a
    /// search index: 40 first names and 40 surnames (Chinese, Malay, Indian,
    /// Western), surnames weighted as they occur (about one customer in ten
    /// is a Tan), written `First [Middle] Surname` with a middle name from
    /// the first-name pool for some: 2-3 words, few distinct tokens, long
    /// posting lists.
    Narrow,
}

impl FromStr for Names {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "wide" => Ok(Names::Wide),
            "narrow" => Ok(Names::Narrow),
            other => Err(format!("unknown name shape {other:?} (wide or narrow)")),
        }
    }
}

/// `n` customers, the same ones for the same seed.
pub fn customers(seed: u64, n: usize) -> impl Iterator<Item = IndexedCustomer> {
    customers_with(seed, n, Names::Wide)
}

/// Customer `i` of the `seed`'s sequence (the `i`-th item of [`customers`]).
pub fn customer(seed: u64, i: u64) -> IndexedCustomer {
    customer_with(seed, i, Names::Wide)
}

/// [`customers`] with names of the given shape; `Names::Wide` gives the
/// same customers as [`customers`]. Phones, emails (derived from the name)
/// and engagements are drawn the same way for either shape.
pub fn customers_with(seed: u64, n: usize, names: Names) -> impl Iterator<Item = IndexedCustomer> {
    let base = base_time();
    (0..n as u64).map(move |i| customer_at(seed, i, base, names))
}

/// Customer `i` of [`customers_with`]`(seed, _, names)`.
pub fn customer_with(seed: u64, i: u64, names: Names) -> IndexedCustomer {
    customer_at(seed, i, base_time(), names)
}

/// A number as people type it. `variant` (modulo [`TYPED_VARIANTS`]):
/// 0 `+65 8122 6418`, 1 `8122 6418` (national: parse it with the number's
/// region as default region), 2 `(065) 8122-6418` (with the region too),
/// 3 `0065 81226418`.
pub fn typed_phone(phone: &PhoneNumber, variant: usize) -> String {
    let digits = phone.digits();
    let national = phone
        .national_number()
        .filter(|n| digits.ends_with(n.as_str()))
        .unwrap_or_else(|| digits.to_string());
    let cc = &digits[..digits.len() - national.len()];
    let (head, tail) = national.split_at(national.len() / 2);
    match variant % TYPED_VARIANTS {
        0 => format!("+{cc} {head} {tail}"),
        1 => format!("{head} {tail}"),
        2 => format!("(0{cc}) {head}-{tail}"),
        _ => format!("00{cc} {national}"),
    }
}

/// The ISO region of the countries the generator uses (`SG`, `MY`, `IN`,
/// `GB`), for parsing [`typed_phone`] output typed without country code.
pub fn region_of(phone: &PhoneNumber) -> Option<&'static str> {
    let d = phone.digits();
    [("65", "SG"), ("60", "MY"), ("91", "IN"), ("44", "GB")]
        .into_iter()
        .find(|(cc, _)| d.starts_with(cc))
        .map(|(_, r)| r)
}

fn base_time() -> Timestamp {
    // A constant: parsing it cannot fail.
    time::parse("2026-01-01T00:00:00Z").unwrap_or_default()
}

/// Independent streams per customer: a mixed `(seed, i)`.
fn rng_for(seed: u64, i: u64) -> SplitMix64 {
    let mut s = SplitMix64::new(seed ^ 0xA076_1D64_78BD_642F);
    let k = s.next_u64();
    SplitMix64::new(k ^ i.wrapping_mul(0xE703_7ED1_A0B4_28DB))
}

/// A UUID (version 4 layout) made of PRNG bits.
fn uuid_text(rng: &mut SplitMix64) -> String {
    let hi = rng.next_u64();
    let lo = rng.next_u64();
    let hi = (hi & 0xFFFF_FFFF_FFFF_0FFF) | 0x0000_0000_0000_4000;
    let lo = (lo & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xFFFF,
        hi & 0xFFFF,
        lo >> 48,
        lo & 0xFFFF_FFFF_FFFF
    )
}

fn customer_id(rng: &mut SplitMix64) -> CustomerId {
    // The text is a well-formed UUID by construction.
    CustomerId::from_str(&uuid_text(rng)).unwrap_or_default()
}

fn engagement_id(rng: &mut SplitMix64) -> EngagementId {
    EngagementId::from_str(&uuid_text(rng)).unwrap_or_default()
}

// ---------------------------------------------------------------- names

/// A generated name: as displayed, and ASCII parts for email addresses.
struct Name {
    display: String,
    given: String,
    family: String,
    culture: Culture,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Culture {
    Chinese,
    Malay,
    Indian,
    Western,
}

const CN_FAMILY: &[&str] = &[
    "Tan", "Lim", "Lee", "Ng", "Ong", "Wong", "Goh", "Chua", "Chan", "Koh", "Teo", "Ang", "Yeo",
    "Tay", "Ho", "Low", "Toh", "Sim", "Chong", "Chia", "Seah", "Foo", "Leong", "Quek", "Chen",
    "Wang", "Zhang", "Liu", "Huang", "Zhou", "Wu", "Xu", "Sun", "Ma", "Zhu", "Hu", "Guo", "Lin",
    "He", "Gao", "Liang", "Zheng", "Luo", "Song", "Xie", "Tang", "Han", "Cao", "Yap", "Kwek",
];
const CN_GIVEN: &[&str] = &[
    "Wei", "Ming", "Hui", "Ling", "Jun", "Jie", "Xin", "Yi", "Mei", "Li", "Hong", "Kai", "Hao",
    "Yu", "Zhi", "Qing", "Xiao", "Jia", "Wen", "Hua", "Siew", "Kok", "Boon", "Chee", "Seng",
    "Keng", "Eng", "Hock", "Poh", "Swee", "Geok", "Choon", "Yong", "Kiat", "Shan", "Ting",
];
const CN_ENGLISH: &[&str] = &[
    "Jason",
    "Kelvin",
    "Alvin",
    "Desmond",
    "Eugene",
    "Gilbert",
    "Terence",
    "Vincent",
    "Bryan",
    "Darren",
    "Marcus",
    "Raymond",
    "Winston",
    "Melvin",
    "Cheryl",
    "Michelle",
    "Jasmine",
    "Vivian",
    "Serene",
    "Joanne",
    "Karen",
    "Shirley",
    "Evelyn",
    "Felicia",
    "Germaine",
    "Irene",
    "Rachel",
    "Gwendolyn",
    "Clarissa",
    "Sharon",
];
/// Han family names with their pinyin.
const HAN_FAMILY: &[(&str, &str)] = &[
    ("陈", "chen"),
    ("林", "lin"),
    ("李", "li"),
    ("黄", "huang"),
    ("王", "wang"),
    ("张", "zhang"),
    ("刘", "liu"),
    ("吴", "wu"),
    ("郑", "zheng"),
    ("杨", "yang"),
    ("周", "zhou"),
    ("徐", "xu"),
    ("孙", "sun"),
    ("马", "ma"),
    ("朱", "zhu"),
    ("胡", "hu"),
    ("郭", "guo"),
    ("何", "he"),
    ("高", "gao"),
    ("罗", "luo"),
];
const HAN_GIVEN: &[(&str, &str)] = &[
    ("伟", "wei"),
    ("明", "ming"),
    ("慧", "hui"),
    ("玲", "ling"),
    ("俊", "jun"),
    ("杰", "jie"),
    ("欣", "xin"),
    ("怡", "yi"),
    ("美", "mei"),
    ("丽", "li"),
    ("红", "hong"),
    ("凯", "kai"),
    ("浩", "hao"),
    ("宇", "yu"),
    ("志", "zhi"),
    ("庆", "qing"),
    ("晓", "xiao"),
    ("佳", "jia"),
    ("文", "wen"),
    ("华", "hua"),
    ("大", "da"),
    ("国", "guo"),
    ("建", "jian"),
    ("秀", "xiu"),
    ("英", "ying"),
];
const MALAY_MALE: &[&str] = &[
    "Muhammad", "Ahmad", "Faizal", "Hafiz", "Syafiq", "Amirul", "Hakim", "Iskandar", "Rizal",
    "Azman", "Firdaus", "Khairul", "Zulkifli", "Ismail", "Danial", "Irfan", "Haziq", "Shahrul",
    "Aidil", "Fadzli", "Nazri", "Ridhwan",
];
const MALAY_FEMALE: &[&str] = &[
    "Nur", "Siti", "Nurul", "Aisyah", "Farah", "Aminah", "Zarina", "Hidayah", "Syazwani", "Liyana",
    "Aishah", "Nabila", "Fatimah", "Izzati", "Amira", "Sofea", "Atiqah", "Hanis", "Shahirah",
    "Nadia",
];
const MALAY_FATHER: &[&str] = &[
    "Abdullah", "Rahman", "Hassan", "Ismail", "Osman", "Yusof", "Ibrahim", "Salleh", "Ahmad",
    "Hamid", "Rahim", "Jaafar", "Kassim", "Mahmud", "Sulaiman", "Rashid", "Aziz", "Latif",
];
const INDIAN_MALE: &[&str] = &[
    "Rajesh",
    "Suresh",
    "Arun",
    "Vijay",
    "Karthik",
    "Prakash",
    "Ravi",
    "Anand",
    "Ganesh",
    "Srinivasan",
    "Harish",
    "Deepak",
    "Arjun",
    "Vikram",
    "Naveen",
    "Sanjay",
    "Muthu",
    "Balakrishnan",
    "Narendra",
    "Senthil",
    "Ramesh",
    "Dinesh",
];
const INDIAN_FEMALE: &[&str] = &[
    "Priya",
    "Lakshmi",
    "Kavitha",
    "Deepa",
    "Anjali",
    "Divya",
    "Meena",
    "Sangeetha",
    "Revathi",
    "Shalini",
    "Nisha",
    "Pooja",
    "Aishwarya",
    "Kamala",
    "Sunita",
    "Vani",
    "Geetha",
    "Malathi",
];
const INDIAN_FAMILY: &[&str] = &[
    "Kumar",
    "Pillai",
    "Nair",
    "Menon",
    "Iyer",
    "Raj",
    "Singh",
    "Sharma",
    "Gupta",
    "Krishnan",
    "Ramasamy",
    "Subramaniam",
    "Nadarajah",
    "Rao",
    "Reddy",
    "Patel",
    "Chandran",
    "Govindasamy",
    "Murugan",
    "Selvam",
    "Rajendran",
    "Thangaraj",
];
const WESTERN_GIVEN: &[&str] = &[
    "James",
    "John",
    "Michael",
    "David",
    "Daniel",
    "Matthew",
    "Andrew",
    "Thomas",
    "William",
    "Benjamin",
    "Oliver",
    "Jack",
    "Ryan",
    "Emma",
    "Olivia",
    "Sophie",
    "Charlotte",
    "Emily",
    "Hannah",
    "Sarah",
    "Jessica",
    "Chloé",
    "Grace",
    "Lucy",
    "Amelia",
    "Zoë",
    "José",
    "Søren",
    "Léa",
    "Katherine",
];
const WESTERN_FAMILY: &[&str] = &[
    "Smith",
    "Jones",
    "Brown",
    "Taylor",
    "Williams",
    "Wilson",
    "Johnson",
    "Davies",
    "Robinson",
    "Wright",
    "Thompson",
    "Evans",
    "Walker",
    "White",
    "Roberts",
    "Green",
    "Hall",
    "Wood",
    "Clarke",
    "Jackson",
    "O'Brien",
    "McDonald",
    "Müller",
    "Schmidt",
    "Fernandes",
    "D'Souza",
    "Rodrigues",
    "van der Berg",
    "Dubois",
    "García",
];

fn name(rng: &mut SplitMix64) -> Name {
    match rng.below(100) {
        0..=44 => chinese(rng),
        45..=64 => malay(rng),
        65..=79 => indian(rng),
        _ => western(rng),
    }
}

fn chinese(rng: &mut SplitMix64) -> Name {
    if rng.chance(15) {
        // 陈大文: family and one or two given characters.
        let (fh, fp) = *rng.pick(HAN_FAMILY);
        let (g1h, g1p) = *rng.pick(HAN_GIVEN);
        let (display, given) = if rng.chance(75) {
            let (g2h, g2p) = *rng.pick(HAN_GIVEN);
            (format!("{fh}{g1h}{g2h}"), format!("{g1p}{g2p}"))
        } else {
            (format!("{fh}{g1h}"), g1p.to_string())
        };
        return Name {
            display,
            given,
            family: fp.to_string(),
            culture: Culture::Chinese,
        };
    }
    let family = *rng.pick(CN_FAMILY);
    let g1 = *rng.pick(CN_GIVEN);
    let g2 = *rng.pick(CN_GIVEN);
    let english = *rng.pick(CN_ENGLISH);
    let (display, given) = match rng.below(10) {
        // Tan Wei Ming
        0..=3 => (format!("{family} {g1} {g2}"), format!("{g1}{g2}")),
        // Jason Tan Wei Ming
        4..=5 => (format!("{english} {family} {g1} {g2}"), english.to_string()),
        // Jason Tan
        6..=7 => (format!("{english} {family}"), english.to_string()),
        // Wei Ming Tan
        8 => (format!("{g1} {g2} {family}"), format!("{g1}{g2}")),
        // Tan Wei
        _ => (format!("{family} {g1}"), g1.to_string()),
    };
    Name {
        display,
        given: ascii_lower(&given),
        family: ascii_lower(family),
        culture: Culture::Chinese,
    }
}

fn malay(rng: &mut SplitMix64) -> Name {
    let male = rng.chance(50);
    let father = *rng.pick(MALAY_FATHER);
    let (first, second) = if male {
        (*rng.pick(MALAY_MALE), *rng.pick(MALAY_MALE))
    } else {
        (*rng.pick(MALAY_FEMALE), *rng.pick(MALAY_FEMALE))
    };
    let (bin, mohd) = if male {
        ("bin", "Muhammad")
    } else {
        ("binti", "Nur")
    };
    let display = match rng.below(10) {
        // Muhammad Faizal bin Abdullah / Nur Aisyah binti Rahman
        0..=3 if first != mohd => format!("{mohd} {first} {bin} {father}"),
        0..=5 => format!("{first} {bin} {father}"),
        // Faizal Hassan
        6..=8 => format!("{first} {father}"),
        _ => format!("{first} {second}"),
    };
    Name {
        display,
        given: ascii_lower(first),
        family: ascii_lower(father),
        culture: Culture::Malay,
    }
}

fn indian(rng: &mut SplitMix64) -> Name {
    let male = rng.chance(50);
    let given = if male {
        *rng.pick(INDIAN_MALE)
    } else {
        *rng.pick(INDIAN_FEMALE)
    };
    let family = *rng.pick(INDIAN_FAMILY);
    let father = *rng.pick(INDIAN_MALE);
    let display = match rng.below(10) {
        // Priya Nair
        0..=4 => format!("{given} {family}"),
        // Rajesh s/o Ramesh, Priya d/o Ramesh
        5..=6 => format!("{given} {} {father}", if male { "s/o" } else { "d/o" }),
        // Arun Kumar Pillai
        7..=8 => format!("{given} {} {family}", rng.pick(INDIAN_MALE)),
        // Malaysian style: Suresh a/l Muthu
        _ => format!("{given} {} {father}", if male { "a/l" } else { "a/p" }),
    };
    let family = if display.contains('/') {
        father
    } else {
        family
    };
    Name {
        display,
        given: ascii_lower(given),
        family: ascii_lower(family),
        culture: Culture::Indian,
    }
}

fn western(rng: &mut SplitMix64) -> Name {
    let given = *rng.pick(WESTERN_GIVEN);
    let family = *rng.pick(WESTERN_FAMILY);
    let display = if rng.chance(15) {
        format!("{given} {} {family}", rng.pick(WESTERN_GIVEN))
    } else {
        format!("{given} {family}")
    };
    Name {
        display,
        given: ascii_lower(given),
        family: ascii_lower(family),
        culture: Culture::Western,
    }
}

/// The narrow shape's first names, by culture (ten each).
const NARROW_FIRST: &[(&str, Culture)] = &[
    ("Wei", Culture::Chinese),
    ("Ming", Culture::Chinese),
    ("Xin", Culture::Chinese),
    ("Hui", Culture::Chinese),
    ("Jun", Culture::Chinese),
    ("Mei", Culture::Chinese),
    ("Ling", Culture::Chinese),
    ("Jie", Culture::Chinese),
    ("Kai", Culture::Chinese),
    ("Yi", Culture::Chinese),
    ("Ahmad", Culture::Malay),
    ("Siti", Culture::Malay),
    ("Nur", Culture::Malay),
    ("Aisyah", Culture::Malay),
    ("Faizal", Culture::Malay),
    ("Hafiz", Culture::Malay),
    ("Farah", Culture::Malay),
    ("Irfan", Culture::Malay),
    ("Nadia", Culture::Malay),
    ("Rizal", Culture::Malay),
    ("Priya", Culture::Indian),
    ("Narendra", Culture::Indian),
    ("Rajesh", Culture::Indian),
    ("Kavitha", Culture::Indian),
    ("Arun", Culture::Indian),
    ("Deepa", Culture::Indian),
    ("Suresh", Culture::Indian),
    ("Anjali", Culture::Indian),
    ("Vijay", Culture::Indian),
    ("Lakshmi", Culture::Indian),
    ("Ann", Culture::Western),
    ("Peter", Culture::Western),
    ("John", Culture::Western),
    ("Mary", Culture::Western),
    ("David", Culture::Western),
    ("Sarah", Culture::Western),
    ("James", Culture::Western),
    ("Grace", Culture::Western),
    ("Daniel", Culture::Western),
    ("Rachel", Culture::Western),
];

/// The narrow shape's surnames with their weight in thousandths (summing
/// to 1000): Tan about a tenth, as in Singapore.
const NARROW_SURNAMES: &[(&str, Culture, u64)] = &[
    ("Tan", Culture::Chinese, 100),
    ("Lim", Culture::Chinese, 75),
    ("Lee", Culture::Chinese, 65),
    ("Ng", Culture::Chinese, 50),
    ("Wong", Culture::Chinese, 40),
    ("Goh", Culture::Chinese, 30),
    ("Chua", Culture::Chinese, 25),
    ("Chan", Culture::Chinese, 25),
    ("Koh", Culture::Chinese, 20),
    ("Teo", Culture::Chinese, 20),
    ("Ong", Culture::Chinese, 20),
    ("Ho", Culture::Chinese, 15),
    ("Yeo", Culture::Chinese, 15),
    ("Low", Culture::Chinese, 15),
    ("Abdullah", Culture::Malay, 45),
    ("Rahman", Culture::Malay, 30),
    ("Hassan", Culture::Malay, 25),
    ("Ismail", Culture::Malay, 25),
    ("Osman", Culture::Malay, 20),
    ("Yusof", Culture::Malay, 20),
    ("Ibrahim", Culture::Malay, 20),
    ("Salleh", Culture::Malay, 20),
    ("Kumar", Culture::Indian, 40),
    ("Singh", Culture::Indian, 35),
    ("Nair", Culture::Indian, 20),
    ("Soni", Culture::Indian, 10),
    ("Pillai", Culture::Indian, 15),
    ("Menon", Culture::Indian, 15),
    ("Iyer", Culture::Indian, 10),
    ("Sharma", Culture::Indian, 10),
    ("Raj", Culture::Indian, 15),
    ("Krishnan", Culture::Indian, 10),
    ("Smith", Culture::Western, 20),
    ("Brown", Culture::Western, 15),
    ("Taylor", Culture::Western, 15),
    ("Wilson", Culture::Western, 10),
    ("Jones", Culture::Western, 10),
    ("Walker", Culture::Western, 10),
    ("Clarke", Culture::Western, 10),
    ("Davies", Culture::Western, 10),
];

/// Share of narrow names (percent) with a middle name.
const NARROW_MIDDLE_PERCENT: u64 = 30;

/// `First [Middle] Surname` from the narrow pools. The first name is of the
/// surname's culture seven times in ten, else from the whole pool; the
/// middle name, when there is one, from the whole pool.
fn narrow(rng: &mut SplitMix64) -> Name {
    let mut at = rng.below(1000);
    let mut surname = NARROW_SURNAMES[0];
    for entry in NARROW_SURNAMES {
        if at < entry.2 {
            surname = *entry;
            break;
        }
        at -= entry.2;
    }
    let (family, culture, _) = surname;
    let first = if rng.chance(70) {
        let own: Vec<&str> = NARROW_FIRST
            .iter()
            .filter(|(_, c)| *c == culture)
            .map(|(n, _)| *n)
            .collect();
        *rng.pick(&own)
    } else {
        rng.pick(NARROW_FIRST).0
    };
    let display = if rng.chance(NARROW_MIDDLE_PERCENT) {
        let middle = rng.pick(NARROW_FIRST).0;
        format!("{first} {middle} {family}")
    } else {
        format!("{first} {family}")
    };
    Name {
        display,
        given: ascii_lower(first),
        family: ascii_lower(family),
        culture,
    }
}

/// Lowercase ASCII letters only: `O'Brien` → `obrien`, `Müller` → `muller`.
fn ascii_lower(s: &str) -> String {
    crm_models::names::tokenize(s)
        .concat()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect()
}

// ---------------------------------------------------------------- phones

/// Singapore mobile prefixes that are valid numbers.
const SG_PREFIXES: [u64; 16] = [
    81, 82, 83, 84, 85, 86, 87, 88, 91, 92, 93, 94, 95, 96, 97, 98,
];
const SG_SPACE: u64 = 16 * 1_000_000;

/// A bijection of `0..SG_SPACE` (multiplier coprime with 2 and 5).
fn sg_permuted(i: u64, seed: u64) -> u64 {
    let offset = seed % SG_SPACE;
    (i.wrapping_mul(7_368_787) % SG_SPACE + offset) % SG_SPACE
}

fn sg_number(k: u64) -> String {
    let prefix = SG_PREFIXES[(k / 1_000_000) as usize % SG_PREFIXES.len()];
    format!("+65{prefix}{:06}", k % 1_000_000)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Country {
    Sg,
    My,
    In,
    Gb,
}

fn country_for(rng: &mut SplitMix64, culture: Culture) -> Country {
    let r = rng.below(100);
    let (my, inn, gb) = match culture {
        Culture::Malay => (15, 0, 1),
        Culture::Indian => (5, 12, 1),
        Culture::Western => (2, 1, 15),
        Culture::Chinese => (6, 0, 1),
    };
    if r < my {
        Country::My
    } else if r < my + inn {
        Country::In
    } else if r < my + inn + gb {
        Country::Gb
    } else {
        Country::Sg
    }
}

fn random_number(rng: &mut SplitMix64, country: Country) -> String {
    match country {
        Country::Sg => sg_number(rng.below(SG_SPACE)),
        // +60 12-345 6789, +60 17-..., +60 19-...
        Country::My => format!(
            "+601{}{:07}",
            rng.pick(&[2, 3, 6, 7, 9]),
            rng.below(10_000_000)
        ),
        // +91 98xxx xxxxx
        Country::In => format!("+91{}{:09}", rng.pick(&[7, 8, 9]), rng.below(1_000_000_000)),
        // +44 7700 900xxx is reserved for drama; use 77xx-79xx.
        Country::Gb => format!(
            "+447{}{:08}",
            rng.pick(&[4, 5, 7, 8, 9]),
            rng.below(100_000_000)
        ),
    }
}

/// A valid number of `country`; falls back to Singapore when the metadata
/// refuses several draws in a row.
fn phone_of(rng: &mut SplitMix64, country: Country, first_sg: Option<u64>) -> PhoneNumber {
    if let (Country::Sg, Some(k)) = (country, first_sg) {
        if let Ok(p) = PhoneNumber::parse(&sg_number(k), None) {
            return p;
        }
    }
    for _ in 0..8 {
        if let Ok(p) = PhoneNumber::parse(&random_number(rng, country), None) {
            return p;
        }
    }
    PhoneNumber::from_e164_unchecked(sg_number(rng.below(SG_SPACE)))
}

// ---------------------------------------------------------------- emails

const DOMAINS: &[&str] = &[
    "gmail.com",
    "gmail.com",
    "gmail.com",
    "yahoo.com.sg",
    "hotmail.com",
    "outlook.com",
    "singnet.com.sg",
    "icloud.com",
    "live.com",
    "yahoo.com",
    "dbs.com",
    "nus.edu.sg",
    "acme.com.sg",
];

fn email_for(rng: &mut SplitMix64, n: &Name) -> Option<Email> {
    let (g, f) = (&n.given, &n.family);
    let local = match rng.below(6) {
        0 => format!("{g}.{f}"),
        1 => format!("{g}{f}{}", rng.below(100)),
        2 => format!("{f}.{g}{}", 60 + rng.below(45)),
        3 => format!("{g}_{f}"),
        4 => format!("{}{f}", g.chars().next().unwrap_or('x')),
        _ => format!("{g}{}", rng.below(10_000)),
    };
    let domain = match n.culture {
        Culture::Malay if rng.chance(20) => "yahoo.com.my",
        _ => *rng.pick(DOMAINS),
    };
    Email::parse(&format!("{local}@{domain}")).ok()
}

// ---------------------------------------------------------------- engagements

const SMS_IN: &[&str] = &[
    "Hi, is the 3-bedroom unit at Tampines still available?",
    "Can I reschedule my appointment to Friday?",
    "Ok thanks, see you at 3pm",
    "Pls call me back when free",
    "Received the quotation, will revert by Monday",
    "Is there parking at the showroom?",
    "Sorry, running 10 min late",
    "How much for the aircon servicing?",
];
const SMS_OUT: &[&str] = &[
    "Your appointment is confirmed for Sat 10am. Reply C to confirm.",
    "Your order has been shipped and will arrive in 2-3 working days.",
    "Reminder: your viewing at Punggol Waterway is tomorrow at 2pm.",
    "Your OTP is valid for 5 minutes. Do not share it with anyone.",
    "Thank you for your payment. Receipt has been emailed to you.",
];
const WA_TEXT: &[&str] = &[
    "Boleh saya tahu harga untuk unit ni?",
    "好的，谢谢！",
    "Can send me the brochure?",
    "Thank you! 👍",
    "Is Saturday morning ok for the viewing?",
    "请问还有货吗？",
    "Noted with thanks",
    "Nanti saya call balik ya",
    "Can deliver to Jurong West?",
];
const EMAIL_SUBJECTS: &[&str] = &[
    "Re: Quotation for renovation works",
    "Invoice for your recent purchase",
    "Viewing confirmed: The Tampines Residences",
    "Your enquiry has been received",
    "Fwd: floor plan and price list",
    "Re: Warranty claim",
    "Welcome to our newsletter",
    "Appointment reminder",
];
const WEB_VIEWS: &[(&str, &str, &str)] = &[
    (
        "listing",
        "https://example.com/listings/",
        "3BR HDB Tampines",
    ),
    (
        "product",
        "https://shop.example.com/p/",
        "Inverter aircon 12000BTU",
    ),
    (
        "article",
        "https://example.com/blog/",
        "How to finance your first home",
    ),
    (
        "pricing",
        "https://example.com/pricing",
        "Plans and pricing",
    ),
    ("contact", "https://example.com/contact", "Contact us"),
];

fn engagement(
    rng: &mut SplitMix64,
    customer: CustomerId,
    at: Timestamp,
    first_name: &str,
) -> Engagement {
    let inbound = rng.chance(60);
    let direction = if inbound {
        Direction::Inbound
    } else {
        Direction::Outbound
    };
    let detail = match rng.below(5) {
        0 => {
            let (view, url, desc) = *rng.pick(WEB_VIEWS);
            let object = rng.below(100_000);
            let url = if url.ends_with('/') {
                format!("{url}{object}")
            } else {
                url.to_string()
            };
            EngagementDetail::Web {
                url,
                view: view.to_string(),
                view_desc: Some(desc.to_string()),
                category: Some(view.to_string()),
                object_id: Some(object.to_string()),
            }
        }
        1 => {
            let status = *rng.pick(&[
                CallStatus::Answered,
                CallStatus::Answered,
                CallStatus::Answered,
                CallStatus::Missed,
                CallStatus::Rejected,
                CallStatus::Voicemail,
            ]);
            let duration_s = if status == CallStatus::Answered {
                10 + rng.below(900) as u32
            } else {
                0
            };
            EngagementDetail::Call {
                direction,
                duration_s,
                status,
            }
        }
        2 => {
            let body = if inbound {
                rng.pick(SMS_IN).to_string()
            } else if rng.chance(30) {
                format!("Hi {first_name}, {}", rng.pick(SMS_OUT))
            } else {
                rng.pick(SMS_OUT).to_string()
            };
            EngagementDetail::Sms { direction, body }
        }
        3 => {
            let payload_type = *rng.pick(&[
                PayloadType::Text,
                PayloadType::Text,
                PayloadType::Text,
                PayloadType::Text,
                PayloadType::Image,
                PayloadType::File,
            ]);
            let payload = match payload_type {
                PayloadType::Text => rng.pick(WA_TEXT).to_string(),
                PayloadType::Image => format!(
                    "IMG-2025{:04}-WA{:04}.jpg",
                    rng.below(1232),
                    rng.below(10_000)
                ),
                PayloadType::File => "floorplan.pdf".to_string(),
            };
            EngagementDetail::Whatsapp {
                direction,
                payload_type,
                payload,
            }
        }
        _ => EngagementDetail::Email {
            direction,
            subject: rng.pick(EMAIL_SUBJECTS).to_string(),
        },
    };
    Engagement {
        id: engagement_id(rng),
        customer_id: customer,
        occurred_at: at,
        recorded_at: at + Duration::from_secs(rng.below(5)),
        source: Source::default(),
        detail,
    }
}

// ---------------------------------------------------------------- customers

fn customer_at(seed: u64, i: u64, base: Timestamp, names: Names) -> IndexedCustomer {
    let mut rng = rng_for(seed, i);
    let id = customer_id(&mut rng);
    let name = match names {
        Names::Wide => name(&mut rng),
        Names::Narrow => narrow(&mut rng),
    };

    // Up to two years before the base time.
    let created_at = base - Duration::from_secs(rng.below(2 * 365 * 24 * 3600));
    let mut c = Customer::new(id, Some(name.display.clone()), created_at);

    let first = country_for(&mut rng, name.culture);
    let first_sg = (i < SG_SPACE).then(|| sg_permuted(i, seed));
    c.phones.push(phone_of(&mut rng, first, first_sg));
    if rng.chance(25) {
        let second = if rng.chance(70) {
            Country::Sg
        } else {
            country_for(&mut rng, name.culture)
        };
        let p = phone_of(&mut rng, second, None);
        if !c.phones.contains(&p) {
            c.phones.push(p);
        }
    }

    let emails = match rng.below(10) {
        0..=2 => 0,
        3..=8 => 1,
        _ => 2,
    };
    for _ in 0..emails {
        let email = match names {
            Names::Wide => email_for(&mut rng, &name),
            // From 1,600 name pairs every address would be shared by
            // hundreds: people with common names add digits.
            Names::Narrow => {
                let digits = rng.below(1_000_000);
                email_for(&mut rng, &name).and_then(|e| {
                    let (local, domain) = e.as_str().split_once('@')?;
                    Email::parse(&format!("{local}{digits}@{domain}")).ok()
                })
            }
        };
        if let Some(e) = email {
            if !c.emails.contains(&e) {
                c.emails.push(e);
            }
        }
    }

    let count = rng.below(MAX_ENGAGEMENTS as u64 + 1) as usize;
    let span = (base - created_at).num_seconds().max(1) as u64;
    let first_name = name
        .display
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    let mut engagements = Vec::with_capacity(count);
    for _ in 0..count {
        let at = created_at + Duration::from_secs(rng.below(span));
        let e = engagement(&mut rng, id, at, &first_name);
        *c.counts.get_mut(e.channel()) += 1;
        engagements.push(e);
    }
    // Older history beyond the ten kept in the summary.
    if count == MAX_ENGAGEMENTS {
        for channel in crm_models::Channel::ALL {
            *c.counts.get_mut(channel) += rng.below(20);
        }
    }
    c.last_engagement_at = engagements.iter().map(|e| e.occurred_at).max();
    c.updated_at = c.last_engagement_at.unwrap_or(created_at);
    IndexedCustomer::new(c, engagements)
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use crm_models::{Channel, Region};

    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_customers() {
        let a: Vec<IndexedCustomer> = customers(7, 300).collect();
        let b: Vec<IndexedCustomer> = customers(7, 300).collect();
        assert_eq!(a, b);
        assert_eq!(a[123], customer(7, 123));
        let c: Vec<IndexedCustomer> = customers(8, 300).collect();
        assert_ne!(a[0].customer.id, c[0].customer.id);
        assert_ne!(a[0].customer.name, c[0].customer.name);
    }

    #[test]
    fn customers_are_valid_and_varied() {
        let all: Vec<IndexedCustomer> = customers(1, 3000).collect();
        let ids: HashSet<CustomerId> = all.iter().map(|c| c.customer.id).collect();
        assert_eq!(ids.len(), all.len());
        let first_phones: HashSet<&str> =
            all.iter().map(|c| c.customer.phones[0].as_str()).collect();
        assert_eq!(first_phones.len(), all.len(), "first phones are unique");

        let mut countries: HashMap<&str, usize> = HashMap::new();
        let mut channels: HashSet<Channel> = HashSet::new();
        let (mut han, mut bin, mut no_email, mut two_emails, mut no_engagement) = (0, 0, 0, 0, 0);
        for doc in &all {
            let c = &doc.customer;
            let name = c.name.as_deref().unwrap();
            assert!(!crm_models::names::tokenize(name).is_empty(), "{name}");
            han += usize::from(
                name.chars()
                    .any(|ch| ('\u{4e00}'..='\u{9fff}').contains(&ch)),
            );
            bin += usize::from(name.contains(" bin ") || name.contains(" binti "));
            assert!((1..=2).contains(&c.phones.len()));
            for p in &c.phones {
                assert_eq!(PhoneNumber::parse(p.as_str(), None).as_ref(), Ok(p), "{p}");
                *countries.entry(region_of(p).unwrap()).or_default() += 1;
            }
            assert!(c.emails.len() <= 2);
            no_email += usize::from(c.emails.is_empty());
            two_emails += usize::from(c.emails.len() == 2);
            for e in &c.emails {
                assert_eq!(Email::parse(e.as_str()).as_ref(), Ok(e));
            }
            assert!(doc.last_engagements.len() <= MAX_ENGAGEMENTS);
            no_engagement += usize::from(doc.last_engagements.is_empty());
            for e in &doc.last_engagements {
                assert_eq!(e.customer_id, c.id);
                assert!(e.occurred_at >= c.created_at);
                assert!(Some(e.occurred_at) <= c.last_engagement_at);
                assert!(!e.detail.preview().is_empty());
                channels.insert(e.channel());
            }
            assert!(c.counts.total() >= doc.last_engagements.len() as u64);
            assert!(doc.is_searchable());
        }
        assert_eq!(channels.len(), Channel::ALL.len());
        for region in ["SG", "MY", "IN", "GB"] {
            assert!(
                countries.get(region).copied().unwrap_or(0) > 10,
                "{countries:?}"
            );
        }
        assert!(countries["SG"] > all.len() / 2, "{countries:?}");
        assert!(han > 50 && bin > 50, "han {han}, bin {bin}");
        assert!(no_email > 0 && two_emails > 0 && no_engagement > 0);
    }

    #[test]
    fn typed_phones_parse_back() {
        for doc in customers(3, 500) {
            for p in &doc.customer.phones {
                let region = Region::parse(region_of(p).unwrap()).ok();
                for v in 0..TYPED_VARIANTS {
                    let typed = typed_phone(p, v);
                    let needs_region = matches!(v, 1 | 2);
                    let parsed =
                        PhoneNumber::parse(&typed, needs_region.then_some(region).flatten());
                    assert_eq!(parsed.as_ref(), Ok(p), "{typed} (variant {v})");
                }
            }
        }
        let sg = PhoneNumber::parse("+6581226418", None).unwrap();
        let typed: Vec<String> = (0..TYPED_VARIANTS).map(|v| typed_phone(&sg, v)).collect();
        assert_eq!(
            typed,
            [
                "+65 8122 6418",
                "8122 6418",
                "(065) 8122-6418",
                "0065 81226418"
            ]
        );
    }

    #[test]
    fn the_pools_of_the_narrow_shape_are_forty_names_each() {
        let firsts: HashSet<&str> = NARROW_FIRST.iter().map(|(n, _)| *n).collect();
        let surnames: HashSet<&str> = NARROW_SURNAMES.iter().map(|(n, _, _)| *n).collect();
        assert_eq!((firsts.len(), surnames.len()), (40, 40));
        let weights: u64 = NARROW_SURNAMES.iter().map(|(_, _, w)| w).sum();
        assert_eq!(weights, 1000);
    }

    #[test]
    fn narrow_names_come_from_the_pools_and_repeat_as_in_singapore() {
        let n = 20_000;
        let all: Vec<IndexedCustomer> = customers_with(5, n, Names::Narrow).collect();
        assert_eq!(all, customers_with(5, n, Names::Narrow).collect::<Vec<_>>());
        assert_eq!(all[777], customer_with(5, 777, Names::Narrow));
        // The wide shape is unchanged and stays the default.
        assert_eq!(customer_with(5, 777, Names::Wide), customer(5, 777));
        assert_eq!(Names::default(), Names::Wide);
        assert_eq!("narrow".parse(), Ok(Names::Narrow));
        assert!("medium".parse::<Names>().is_err());

        let firsts: HashSet<&str> = NARROW_FIRST.iter().map(|(n, _)| *n).collect();
        let surnames: HashSet<&str> = NARROW_SURNAMES.iter().map(|(n, _, _)| *n).collect();
        let mut words_per_name: HashMap<usize, usize> = HashMap::new();
        let mut by_surname: HashMap<&str, usize> = HashMap::new();
        let mut distinct_names = HashSet::new();
        for doc in &all {
            let c = &doc.customer;
            let name = c.name.as_deref().unwrap();
            let words: Vec<&str> = name.split(' ').collect();
            *words_per_name.entry(words.len()).or_default() += 1;
            let (surname, given) = words.split_last().unwrap();
            assert!(surnames.contains(surname), "{name}");
            assert!(given.iter().all(|w| firsts.contains(w)), "{name}");
            *by_surname.entry(surname).or_default() += 1;
            distinct_names.insert(name);
            // Phones and emails as the wide shape draws them.
            assert!((1..=2).contains(&c.phones.len()));
            for p in &c.phones {
                assert_eq!(PhoneNumber::parse(p.as_str(), None).as_ref(), Ok(p), "{p}");
            }
            for e in &c.emails {
                assert_eq!(Email::parse(e.as_str()).as_ref(), Ok(e));
            }
            assert!(doc.is_searchable());
        }
        assert_eq!(
            words_per_name.keys().copied().collect::<HashSet<_>>(),
            HashSet::from([2, 3])
        );
        let three = words_per_name[&3] as f64 / n as f64;
        assert!((0.27..0.33).contains(&three), "{three}");
        let tan = by_surname["Tan"] as f64 / n as f64;
        assert!((0.09..0.11).contains(&tan), "{tan}");
        assert_eq!(by_surname.len(), 40);
        // Low variety: 80 words in all, and a third of the names shared.
        let words: HashSet<&str> = distinct_names.iter().flat_map(|n| n.split(' ')).collect();
        assert!(words.len() <= 80, "{}", words.len());
        assert!(distinct_names.len() < n * 2 / 3, "{}", distinct_names.len());
        let first_phones: HashSet<&str> =
            all.iter().map(|c| c.customer.phones[0].as_str()).collect();
        assert_eq!(first_phones.len(), all.len(), "first phones are unique");
    }

    #[test]
    fn uuids_are_well_formed() {
        let mut rng = SplitMix64::new(1);
        for _ in 0..100 {
            let t = uuid_text(&mut rng);
            assert_eq!(CustomerId::from_str(&t).unwrap().to_string(), t);
        }
    }
}
